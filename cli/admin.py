"""`modeldrop models` and `modeldrop verify NAME`: read-only questions to a modeldrop server's API.

Both are one GET: `/api/models` lists what is installed (and the disk's free space), `/api/verify/<name>`
has the server re-check one installed model on disk (size and GGUF structure, the SHA-256 on request).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from modeldrop.cli import tus
from modeldrop.cli.client import HttpClient, NetworkError, add_server_arguments, server_and_token

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class RequestFailed(Exception):
    """The server could not be reached or refused the question; the message says which, for people."""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_server_arguments(parser)
    if command == "models":
        parser.description = ("List the models installed on a modeldrop server, with the free space left "
                              "on its models disk. Exit status: 0 listed, 1 the server could not answer.")
        parser.add_argument("--json", action="store_true",
                            help="print the server's JSON document as it is instead of a table")
    elif command == "verify":
        parser.description = ("Ask a modeldrop server to re-check an installed model on disk (size and GGUF "
                              "structure, the SHA-256 on request) and print its verdict. Exit status: 0 the "
                              "model is intact, 1 it is not, is unknown, or the server could not answer.")
        parser.add_argument("name", metavar="NAME",
                            help="the installed model's file name, as `modeldrop models` lists it")
        parser.add_argument("--sha256", action="store_true",
                            help="also re-hash the whole file and report its SHA-256 (reads every byte: slow "
                                 "for big models)")
        parser.add_argument("--json", action="store_true",
                            help="print the server's JSON document as it is instead of a summary")
    else:
        raise ValueError(f"cli.admin does not serve {command!r}")


def run(command: str, args: argparse.Namespace) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    try:
        server, token = server_and_token(args, os.environ)
    except ValueError as error:
        print(f"modeldrop {command}: error: {error}", file=stderr)
        return EXIT_USAGE
    http = HttpClient(timeout=args.timeout)
    try:
        if command == "models":
            document = fetch(http, tus.api_url(server, "models"), token)
            print(json.dumps(document, indent=2) if args.json else format_models(document), file=stdout)
            return EXIT_OK
        query = "?sha256=1" if args.sha256 else ""
        document = fetch(http, tus.api_url(server, f"verify/{quote(args.name, safe='')}{query}"), token,
                         report_key="ok")
        print(json.dumps(document, indent=2) if args.json else format_verify(document, args.name), file=stdout)
        return EXIT_OK if document.get("ok") is True else EXIT_FAILED
    except RequestFailed as error:
        print(f"modeldrop {command}: {error}", file=stderr)
        return EXIT_FAILED
    finally:
        http.close()


def fetch(http: HttpClient, url: str, token: str | None, report_key: str | None = None) -> dict[str, Any]:
    """GET a JSON document; anything else becomes RequestFailed carrying the server's own message.

    With `report_key`, an error status whose body is still a report (has that key) counts as the
    answer: a verify that found damage may say so with a non-2xx status and the full report.
    """
    try:
        response = http.get_json(url, token)
    except NetworkError as error:
        raise RequestFailed(str(error)) from None
    try:
        document = response.json()
    except tus.ProtocolError:
        document = None
    if isinstance(document, dict) and (response.ok or (report_key is not None and report_key in document)):
        return document
    _, message = response.error()
    raise RequestFailed(message if str(response.status) in message else f"{message} (HTTP {response.status})")


# ---------------------------------------------------------------- presentation (pure)


def format_models(document: Mapping[str, Any]) -> str:
    """The /api/models document as an aligned table plus a line about the disk."""
    models = document.get("models") or []
    rows = [("NAME", "KIND", "SIZE", "ARCH", "QUANT", "MODIFIED")]
    for model in models:
        gguf = model.get("gguf") or {}
        kind = str(model.get("kind") or "file")
        if kind == "split":
            kind = f"split/{len(model.get('shards') or [])}"
        rows.append((str(model.get("name", "?")), kind, tus.format_size(int(model.get("size") or 0)),
                     str(gguf.get("architecture") or "-"), str(gguf.get("quantization") or "-"),
                     _format_time(model.get("mtime"))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not models:
        lines = ["no models installed"]
    disk = document.get("disk")
    if isinstance(disk, Mapping) and disk.get("total"):
        lines.append(f"disk: {tus.format_size(int(disk.get('free') or 0))} free of "
                     f"{tus.format_size(int(disk['total']))}")
    return "\n".join(lines)


def format_verify(document: Mapping[str, Any], name: str) -> str:
    """'ok NAME (4.9 GiB, llama, Q4_K_M, sha256 …)' or 'not ok NAME: reason'."""
    shown = str(document.get("name") or name)
    if document.get("ok") is not True:
        return f"not ok {shown}: {document.get('reason') or 'no reason given'}"
    facts = []
    if document.get("size") is not None:
        facts.append(tus.format_size(int(document["size"])))
    facts += tus.gguf_facts(document.get("gguf"))
    if document.get("sha256"):
        facts.append(f"sha256 {document['sha256']}")
    return f"ok {shown}" + (f" ({', '.join(facts)})" if facts else "")


def _format_time(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
