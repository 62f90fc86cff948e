"""The neutral client, run as its own process: raw sockets, HTTP/1.1 keep-alive, bodies sent with sendfile.

    python -m bench.client '<json job>'      prints one JSON result line

Modes: `upload` (create, then one PATCH or fixed-size PATCHes; or with "protocol": "rufh" the whole file in
one IETF Resumable Uploads creation; optionally poll modeldrop's status until installed), `concurrent`
(N uploads, one PATCH each, in threads), `heads` (HEAD probes until a stop file appears), `raw` (sendfile a byte count to a plain TCP receiver, wait for its one-byte ack).
Times are CLOCK_MONOTONIC, shared by every process on the machine. Every loop has a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any

HOST = "127.0.0.1"
TIMEOUT = 300.0


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, method: str, path: str, headers: dict[str, str], body_file: Any = None,
                offset: int = 0, count: int = 0) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers.items())]
        if body_file is not None or method in ("POST", "PATCH"):
            lines.append(f"Content-Length: {count}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if count:
            sent = self.sock.sendfile(body_file, offset, count)
            if sent != count:
                raise RuntimeError(f"sendfile sent {sent} of {count} bytes")
        return self._response(method)

    def _response(self, method: str) -> tuple[int, dict[str, str], bytes]:
        status = 100
        while 100 <= status < 200:  # interim answers (100 Continue, RUFH's 104) come before the final one
            while b"\r\n\r\n" not in self.buffer:
                self._fill()
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            status = int(status_line.split()[1])
        if method == "HEAD" or status in (204, 304):
            return status, headers, b""
        if "chunked" in headers.get("transfer-encoding", ""):
            return status, headers, self._chunked()
        return status, headers, self._exactly(int(headers.get("content-length", 0)))

    def _exactly(self, length: int) -> bytes:
        while len(self.buffer) < length:
            self._fill()
        data, self.buffer = self.buffer[:length], self.buffer[length:]
        return data

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._fill()
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            body += self._exactly(size + 2)[:size]  # each chunk ends with CRLF; the last (0) has no trailers here
            if size == 0:
                return body

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


def _metadata(filename: str) -> str:
    pairs = {"filename": filename, "filetype": "application/octet-stream"}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def _tus(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Tus-Resumable": "1.0.0", **(extra or {})}


def create(conn: Connection, base: str, length: int, filename: str) -> str:
    status, headers, body = conn.request("POST", base, _tus({"Upload-Length": str(length),
                                                             "Upload-Metadata": _metadata(filename)}))
    if status != 201:
        raise RuntimeError(f"POST answered {status}: {body[:300]!r}")
    return urllib.parse.urlsplit(headers["location"]).path


def send(conn: Connection, path: str, source: Any, length: int, chunk: int) -> list[float]:
    """PATCHes the whole file; returns the monotonic time of each response."""
    offset, stamps = 0, []
    while offset < length:
        count = min(chunk or length, length - offset)
        status, headers, body = conn.request("PATCH", path, _tus({
            "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}), source, offset, count)
        stamps.append(time.monotonic())
        if status != 204 or int(headers.get("upload-offset", -1)) != offset + count:
            raise RuntimeError(f"PATCH at {offset} answered {status} {headers.get('upload-offset')}: {body[:300]!r}")
        offset += count
    return stamps


def poll_installed(conn: Connection, upload_path: str, deadline: float) -> dict[str, Any]:
    upload_id = upload_path.rstrip("/").rsplit("/", 1)[-1]
    while time.monotonic() < deadline:
        status, _, body = conn.request("GET", f"/api/uploads/{upload_id}", {})
        record = json.loads(body) if status == 200 else {}
        if record.get("state") in ("installed", "failed"):
            return {"state": record["state"], "t_state": time.monotonic(), "sha256": record.get("sha256"),
                    "final_name": record.get("final_name"), "reason": record.get("reason")}
        time.sleep(0.005)
    return {"state": "timeout", "t_state": time.monotonic()}


def create_with_data(conn: Connection, source: Any, length: int, filename: str) -> tuple[str, float]:
    """IETF Resumable Uploads for HTTP (current draft, interop version 9): the whole file in the creation."""
    status, headers, body = conn.request("POST", "/uploads/", {
        "Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1", "Upload-Length": str(length),
        "Content-Disposition": f'attachment; filename="{filename}"', "Content-Type": "application/octet-stream"},
        source, 0, length)
    ended = time.monotonic()
    if status not in (200, 201, 204):
        raise RuntimeError(f"RUFH POST answered {status}: {body[:300]!r}")
    return urllib.parse.urlsplit(headers["location"]).path, ended


def upload(job: dict[str, Any]) -> dict[str, Any]:
    conn = Connection(job["port"])
    with open(job["source"], "rb") as source:
        if job.get("protocol") == "rufh":
            started = time.monotonic()
            path, ended = create_with_data(conn, source, job["length"], job["filename"])
            stamps = [ended]
        else:
            path = create(conn, job["base"], job["length"], job["filename"])
            started = time.monotonic()
            stamps = send(conn, path, source, job["length"], job.get("chunk", 0))
    result = {"path": path, "t_start": started, "t_end": stamps[-1], "patches": len(stamps)}
    if job.get("poll_status"):
        result.update(poll_installed(conn, path, stamps[-1] + job.get("status_timeout", 120)))
    conn.close()
    return result


def concurrent(job: dict[str, Any]) -> dict[str, Any]:
    n, length = job["uploads"], job["length"]
    conns = [Connection(job["port"]) for _ in range(n)]
    paths = [create(c, job["base"], length, f"{job['filename_prefix']}-{i}.gguf") for i, c in enumerate(conns)]
    idle_conn = Connection(job["port"])
    idle = [create(idle_conn, job["base"], length, f"{job['filename_prefix']}-idle-{i}.gguf")
            for i in range(job["idle"])]
    idle_conn.close()
    start_at = time.monotonic() + job.get("start_delay", 0.5)  # the HEAD prober gets these ids meanwhile
    print(json.dumps({"idle": idle}), flush=True)
    ends: list[float] = [0.0] * n
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            with open(job["source"], "rb") as source:
                time.sleep(max(0.0, start_at - time.monotonic()))
                ends[i] = send(conns[i], paths[i], source, length, 0)[-1]
        except Exception as exc:  # reported, not raised: the other threads keep going
            errors.append(f"{paths[i]}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    for conn in conns:
        conn.close()
    return {"paths": paths, "idle": idle, "t_start": start_at, "t_end": max(ends), "errors": errors}


def heads(job: dict[str, Any]) -> dict[str, Any]:
    conn = Connection(job["port"])
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + job["max_seconds"]
    index = 0
    while time.monotonic() < deadline and not os.path.exists(job["stop_file"]):
        path = job["paths"][index % len(job["paths"])]
        sent = time.monotonic()
        status, _, _ = conn.request("HEAD", path, _tus())
        done = time.monotonic()
        if status != 200:
            raise RuntimeError(f"HEAD {path} answered {status}")
        samples.append((sent, done - sent))
        index += 1
        time.sleep(job.get("interval", 0.02))
    conn.close()
    return {"samples": samples}


def raw(job: dict[str, Any]) -> dict[str, Any]:
    sock = socket.create_connection((HOST, job["port"]), timeout=TIMEOUT)
    with open(job["source"], "rb") as source:
        started = time.monotonic()
        sock.sendfile(source, 0, job["length"])
        if sock.recv(1) != b"k":
            raise RuntimeError("the receiver did not acknowledge")
        ended = time.monotonic()
    sock.close()
    return {"t_start": started, "t_end": ended}


MODES = {"upload": upload, "concurrent": concurrent, "heads": heads, "raw": raw}

if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps(MODES[request["mode"]](request)), flush=True)
