"""Resume from anywhere (issue 18), measured: what a creation that declares the file's sha256 costs when the server
has the file already, or part of it.

    .venv/bin/python -m bench.dedupe [--size-gib 4] [--reps 5] [--out bench/results/<date>-dedupe.md]

One `modeldrop serve` (fsync on, embedded finalizer) with an empty data folder in bench/scratch:

1. the source (bench/source.py: a real GGUF header and non-repeating bytes) is uploaded once with the CLI, so the
   server has it installed with its digest on record;
2. install under a new name: a creation of another name with that sha256, timed from the request to the status
   `installed` (the 201 already says linked), and the server's modeldrop_bytes_received_total before and after;
   then `modeldrop upload COPY --sha256 HEX` end to end (a process, Python's start included);
3. resume by digest: half the file is sent to an upload of another name, its URL forgotten; a creation with the
   digest is timed to the first accepted byte (POST, then a 1 MiB PATCH at the offset the 201 gives), against a
   fresh creation's first byte and a HEAD-based resume (the URL remembered) on the same server.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.servers import PYTHON, REPO, SCRATCH, Server
from bench.source import make_source

MIB = 1024 * 1024
PIECE = 1 * MIB


class Http:
    """One kept-alive connection to the server; each call returns (status, headers, body)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        path = "/" + target.split("://", 1)[1].split("/", 1)[1] if "://" in target else target  # a Location
        self.connection.request(method, path, body=body, headers={"Tus-Resumable": "1.0.0", **(headers or {})})
        response = self.connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def metadata(**values: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())


def create(http: Http, length: int, name: str, sha256: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = http.request("POST", "/files/", {"Upload-Length": str(length),
                                                          "Upload-Metadata": metadata(filename=name, sha256=sha256)})
    assert status == 201, status
    return status, headers


def patch(http: Http, location: str, offset: int, data: bytes) -> int:
    status, headers, body = http.request("PATCH", location, {"Upload-Offset": str(offset),
                                                            "Content-Type": "application/offset+octet-stream"}, data)
    assert status == 204, (status, body)
    return int(headers["upload-offset"])


def received_total(http: Http) -> float:
    _, _, body = http.request("GET", "/metrics")
    match = re.search(rb"^modeldrop_bytes_received_total ([0-9.e+]+)$", body, re.M)
    return float(match.group(1)) if match else 0.0


def wait_installed(http: Http, upload_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, body = http.request("GET", f"/api/uploads/{upload_id}")
        status = json.loads(body)
        if status["state"] in ("installed", "failed"):
            return dict(status)
        time.sleep(0.01)
    raise TimeoutError(upload_id)


def send_range(http: Http, location: str, source: Path, start: int, end: int, step: int = 256 * MIB) -> int:
    with open(source, "rb") as file:
        offset = start
        while offset < end:
            file.seek(offset)
            offset = patch(http, location, offset, file.read(min(step, end - offset)))
    return offset


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def summary(values: list[float]) -> str:
    return f"{ms(statistics.median(values))} (min {ms(min(values))}, max {ms(max(values))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the report (markdown) here")
    args = parser.parse_args(argv)

    size_bytes = int(args.size_gib * 2**30)
    print(f"source: {args.size_gib:g} GiB GGUF in bench/scratch (built once, then reused)", file=sys.stderr)
    source_meta = make_source(SCRATCH / f"source-{size_bytes}.gguf", args.size_gib)
    source, length, digest = Path(str(source_meta["path"])), int(str(source_meta["length"])), str(source_meta["sha256"])
    server = Server("modeldrop", "modeldrop", fsync=True)
    server.start()
    rows: list[tuple[str, str]] = []
    try:
        http = Http(server.port)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MODELDROP_")},
               "MODELDROP_STATE_FILE": str(server.data_dir / "cli-state.json")}
        cli = [str(PYTHON), "-m", "modeldrop.cli.main", "upload", "--server", f"http://127.0.0.1:{server.port}", "-q"]

        started = time.monotonic()
        subprocess.run([*cli, str(source)], check=True, env=env, cwd=REPO, capture_output=True)
        rows.append((f"first upload of the {args.size_gib:g} GiB file (CLI, sent in full, installed)",
                     ms(time.monotonic() - started)))

        # -- install under a new name -------------------------------------------------------------
        before = received_total(http)
        to_installed, to_answer = [], []
        inodes = set()
        for rep in range(args.reps):
            t0 = time.perf_counter()
            _, headers = create(http, length, f"copy-{rep}.gguf", digest)
            to_answer.append(time.perf_counter() - t0)
            assert headers["modeldrop-match"] == "linked" and headers["upload-offset"] == str(length), headers
            status = wait_installed(http, headers["location"].rsplit("/", 1)[1])
            to_installed.append(time.perf_counter() - t0)
            assert status["state"] == "installed", status
            inodes.add(os.stat(server.data_dir / "models" / f"copy-{rep}.gguf").st_ino)
        sent = received_total(http) - before
        inodes.add(os.stat(server.data_dir / "models" / source.name).st_ino)
        rows.append(("install under a new name: POST to its 201 (Modeldrop-Match: linked)", summary(to_answer)))
        rows.append(("install under a new name: POST to status `installed`", summary(to_installed)))
        rows.append(("  file bytes the server received for those installs", f"{sent:.0f}"))
        rows.append(("  distinct inodes among the original and its copies", str(len(inodes))))

        copy_dir = SCRATCH / "dedupe-copy"
        shutil.rmtree(copy_dir, ignore_errors=True)
        copy_dir.mkdir()
        copy = copy_dir / "Copy-From-Elsewhere.gguf"
        os.link(source, copy)  # the same bytes under another name, as on another machine (no copy needed)
        cli_times = []
        for rep in range(args.reps):
            Path(env["MODELDROP_STATE_FILE"]).unlink(missing_ok=True)  # another machine: no memory of uploads
            if rep:
                http.request("DELETE", f"/api/models/{copy.name}")
            t0 = time.perf_counter()
            subprocess.run([*cli, f"{copy}={digest}"], check=True, env=env, cwd=REPO, capture_output=True)
            cli_times.append(time.perf_counter() - t0)
        shutil.rmtree(copy_dir)
        rows.append(("`modeldrop upload COPY --sha256 HEX` of a file the server has, end to end (a process)",
                     summary(cli_times)))

        # -- resume by digest -----------------------------------------------------------------------
        half = (length // 2) // PIECE * PIECE
        with open(source, "rb") as file:
            file.seek(half)
            piece = file.read(PIECE)
            file.seek(0)
            first_piece = file.read(PIECE)
        resumed, fresh, by_head = [], [], []
        unfinished = "11" * 32  # stands for a file the server has only half of (never completed here)
        for rep in range(args.reps):
            name = f"resume-{rep}.gguf"
            _, headers = create(http, length, name, unfinished)
            location = headers["location"]
            send_range(http, location, source, 0, half)

            t0 = time.perf_counter()  # another client, who never had the URL
            _, headers = create(http, length, name, unfinished)
            assert headers["modeldrop-match"] == "resumed" and headers["location"] == location, headers
            offset = int(headers["upload-offset"])
            assert offset == half
            patch(http, location, offset, piece)
            resumed.append(time.perf_counter() - t0)

            t0 = time.perf_counter()  # the client that kept the URL: HEAD, then the next bytes
            _, headers, _ = http.request("HEAD", location)
            offset = int(headers["upload-offset"])
            with open(source, "rb") as file:
                file.seek(offset)
                data = file.read(PIECE)
            patch(http, location, offset, data)
            by_head.append(time.perf_counter() - t0)
            http.request("DELETE", location)

            t0 = time.perf_counter()  # for scale: a new upload's first byte
            _, headers = create(http, length, f"fresh-{rep}.gguf", "00" * 32)
            patch(http, headers["location"], 0, first_piece)
            fresh.append(time.perf_counter() - t0)
            http.request("DELETE", headers["location"])
        rows.append(("resumed creation (URL forgotten) to its first accepted 1 MiB: POST 201 resumed + PATCH",
                     summary(resumed)))
        rows.append(("  the same with the URL remembered: HEAD + PATCH", summary(by_head)))
        rows.append(("  a fresh upload's first 1 MiB: POST + PATCH", summary(fresh)))
    finally:
        server.stop()
        server.clean()

    report = [f"# Resume from anywhere: {args.size_gib:g} GiB file, {args.reps} repetitions, fsync on", "",
              "| measure | result |", "|---|---|", *(f"| {what} | {value} |" for what, value in rows), ""]
    text = "\n".join(report)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
