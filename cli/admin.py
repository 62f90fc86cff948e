"""`modeldrop models`, `verify NAME`, `load NAME` and `unload NAME`: questions and requests to a server's API.

`/api/models` lists what is installed (and the disk's free space, and what llama-server says of each model),
`/api/verify/<name>` has the server re-check one installed model on disk (size and GGUF structure, the SHA-256
on request). `load` and `unload` ask the server to have llama-server (router mode) start or stop a model
(`POST /api/models/<name>/load`), then follow `/api/llama` until it is loaded, failed or stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from modeldrop.cli import tus
from modeldrop.cli.client import HttpClient, NetworkError, add_server_arguments, server_and_token

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

POLL_INTERVAL = 0.5
# states of llama-server's models (server/llama.py) that end a `load` or an `unload`, and whether it worked
LOAD_ENDS = {"loaded": True, "sleeping": True, "failed": False, "absent": False}
UNLOAD_ENDS = {"unloaded": True, "failed": True, "absent": True}


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
    elif command in ("load", "unload"):
        if command == "load":
            parser.description = ("Have llama-server (router mode, the server's --llama-server-url) load an installed "
                                  "model now, and wait until it is loaded or its load failed: to check that what "
                                  "was uploaded really runs. Exit status: 0 loaded, 1 it failed, timed out, "
                                  "or the server or llama-server could not answer.")
        else:
            parser.description = ("Have llama-server (router mode) unload an installed model, freeing its memory, "
                                  "and wait until it is stopped. Exit status: 0 unloaded (or was not loaded), 1 "
                                  "the server or llama-server could not answer, or it timed out.")
        parser.add_argument("name", metavar="NAME",
                            help="the installed model's file name (or split set's folder), as `modeldrop models` "
                                 "lists it")
        parser.add_argument("--no-wait", action="store_true",
                            help="return once llama-server has accepted the request, without waiting")
        parser.add_argument("--wait", metavar="SECONDS", type=float, default=600.0,
                            help="wait at most this long for llama-server to finish (default 600)")
        parser.add_argument("--json", action="store_true",
                            help="print the last state as JSON instead of a sentence")
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
        if command in ("load", "unload"):
            return load_or_unload(http, server, token, command, args)
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


def load_or_unload(http: HttpClient, server: str, token: str | None, command: str, args: argparse.Namespace) -> int:
    """POST the request, then follow /api/llama until the model's state ends it (or --wait runs out)."""
    document = fetch(http, tus.api_url(server, f"models/{quote(args.name, safe='')}/{command}"), token,
                     method="POST")
    answered = document.get("llama")
    state: dict[str, Any] = answered if isinstance(answered, dict) else {}
    model = str(state.get("id") or args.name)
    ends = LOAD_ENDS if command == "load" else UNLOAD_ENDS
    deadline = time.monotonic() + max(0.0, args.wait)
    timed_out = False
    while not args.no_wait and state.get("state") not in ends:
        if time.monotonic() >= deadline:
            timed_out = True
            break
        time.sleep(POLL_INTERVAL)
        view = fetch(http, tus.api_url(server, "llama"), token)
        status = view.get("llama_server") or {}
        if status.get("reachable") is False:
            raise RequestFailed(f"llama-server stopped answering: {status.get('error') or 'unreachable'}")
        state = (view.get("models") or {}).get(model) or {"id": model, "state": "absent"}
    worked = not timed_out and (args.no_wait or ends.get(str(state.get("state")), False))
    if timed_out:
        sentence = (f"timed out after {args.wait:g}s: llama-server still says {describe_state(state)} for "
                    f"{args.name}")
    else:
        sentence = format_outcome(command, args.name, state, waited=not args.no_wait)
    if args.json:
        print(json.dumps(state), file=sys.stdout)
    if worked:
        if not args.json:
            print(sentence, file=sys.stdout)
        return EXIT_OK
    print(f"modeldrop {command}: {sentence}", file=sys.stderr)
    return EXIT_FAILED


def fetch(http: HttpClient, url: str, token: str | None, report_key: str | None = None,
          method: str = "GET") -> dict[str, Any]:
    """GET (or POST) a JSON document; anything else becomes RequestFailed carrying the server's own message.

    With `report_key`, an error status whose body is still a report (has that key) counts as the
    answer: a verify that found damage may say so with a non-2xx status and the full report.
    """
    try:
        response = http.get_json(url, token) if method == "GET" else http.request(method, url, tus.json_headers(token))
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


def describe_state(state: Mapping[str, Any] | None) -> str:
    """One model's state in llama-server as a word or two: 'loaded', 'loading 40%', 'failed (exit 1)'."""
    if not isinstance(state, Mapping) or not state.get("state"):
        return "-"
    word = str(state["state"])
    if word == "failed" and state.get("exit_code") is not None:
        return f"failed (exit {state['exit_code']})"
    if word == "loading" and isinstance(state.get("progress"), (int, float)):
        return f"loading {round(100 * state['progress'])}%"
    if word == "absent":
        return "not listed"
    return word


def format_outcome(command: str, name: str, state: Mapping[str, Any], waited: bool = True) -> str:
    model = state.get("id") or name
    word = state.get("state")
    if not waited:
        return f"{command} of {name} requested: llama-server says {describe_state(state)} (model {model})"
    if command == "load" and word in ("loaded", "sleeping"):
        return f"loaded {name} in llama-server (model {model})"
    if command == "load" and word == "failed":
        code = state.get("exit_code")
        return (f"llama-server could not load {name} (model {model}): its process exited"
                f"{f' with code {code}' if code is not None else ''}; llama-server's log says why")
    if command == "load":
        return f"llama-server does not list {name} (model {model}): is it in router mode on modeldrop's models folder?"
    return f"unloaded {name} from llama-server (model {model})"


def format_models(document: Mapping[str, Any]) -> str:
    """The /api/models document as an aligned table plus lines about llama-server and the disk."""
    models = document.get("models") or []
    rows = [("NAME", "KIND", "SIZE", "ARCH", "QUANT", "MODIFIED", "LLAMA-SERVER")]
    for model in models:
        gguf = model.get("gguf") or {}
        kind = str(model.get("kind") or "file")
        if kind == "split":
            kind = f"split/{len(model.get('shards') or [])}"
        elif kind == "set":  # a model and its projector, in one folder
            shards = len(model.get("shards") or [])
            kind = (f"split/{shards}" if shards else "file") + ("+mmproj" if model.get("projector") else "")
        rows.append((str(model.get("name", "?")), kind, tus.format_size(int(model.get("size") or 0)),
                     str(gguf.get("architecture") or "-"), str(gguf.get("quantization") or "-"),
                     _format_time(model.get("mtime")), describe_state(model.get("llama"))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not models:
        lines = ["no models installed"]
    llama = document.get("llama_server")
    if isinstance(llama, Mapping) and llama.get("configured") and llama.get("reachable") is False:
        lines.append(f"llama-server: not reachable ({llama.get('error') or 'no answer'})")
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
    """Seconds since the epoch, or the server's ISO 8601 UTC text, as local time."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return "-"
    if not isinstance(value, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
