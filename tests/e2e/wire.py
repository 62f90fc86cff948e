"""tus on the wire, for faults no client library will produce: raw PATCH sockets, HEAD, status, stored bytes."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import struct
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support.processes import ServerProcess, wait_for

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def call(url: str, method: str, headers: dict[str, str] | None = None, body: bytes = b"",
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request(method, parts.path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def create(base_url: str, length: int, filename: str) -> str:
    """POST /files/ → the upload URL."""
    metadata = "filename " + base64.b64encode(filename.encode()).decode()
    status, headers, body = call(f"{base_url}/files/", "POST",
                                 {**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata})
    assert status == 201, f"POST answered {status}: {body[:300]!r}"
    return headers["location"]


def on(server: ServerProcess, upload_url: str) -> str:
    """The same upload, addressed through another server (or proxy) sharing the data directory."""
    return f"{server.url}/files/{upload_id(upload_url)}"


def upload_id(upload_url: str) -> str:
    return upload_url.rstrip("/").rsplit("/", 1)[-1]


def head_offset(upload_url: str, timeout: float = 30) -> int:
    status, headers, _ = call(upload_url, "HEAD", TUS, timeout=timeout)
    assert status == 200, f"HEAD {upload_url} answered {status}"
    return int(headers["upload-offset"])


def patch(upload_url: str, offset: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
    return call(upload_url, "PATCH", {**OCTETS, "Upload-Offset": str(offset)}, body)


def upload_state(base_url: str, upload_url: str) -> dict[str, Any]:
    status, _, body = call(f"{base_url}/api/uploads/{upload_id(upload_url)}", "GET")
    assert status == 200, f"GET /api/uploads answered {status}: {body[:300]!r}"
    return dict(json.loads(body))


def wait_installed(base_url: str, upload_url: str, timeout: float = 30) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        state = upload_state(base_url, upload_url)
        return state if state["state"] in ("installed", "failed") else None
    state: dict[str, Any] = wait_for(settled, timeout, f"upload {upload_url} to be installed", interval=0.1)
    assert state["state"] == "installed", f"the upload failed: {state['reason']}"
    return state


def stored_bytes(server: ServerProcess, upload_url: str) -> bytes:
    """What the staging store holds for an unfinished upload: its length is the offset."""
    return (server.staging_dir / "uploads" / f"{upload_id(upload_url)}.bin").read_bytes()


def stored_size(server: ServerProcess, upload_url: str) -> int:
    try:
        return (server.staging_dir / "uploads" / f"{upload_id(upload_url)}.bin").stat().st_size
    except FileNotFoundError:
        return 0


class RawPatch:
    """A PATCH written by hand on a socket: headers promising `length` body bytes, then whatever we send."""

    def __init__(self, upload_url: str, offset: int, length: int, headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(upload_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sent = 0
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
                f"Content-Type: application/offset+octet-stream\r\n{extra}"
                f"Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n")
        self.sock.sendall(head.encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def send_slowly(self, data: bytes, rate: float, piece: int = 64 * 1024) -> None:
        """About `rate` bytes a second; stops quietly when the server closes the connection."""
        started = time.monotonic()
        for start in range(0, len(data), piece):
            try:
                self.send(data[start:start + piece])
            except OSError:
                return
            time.sleep(max(0.0, started + self.sent / rate - time.monotonic()))

    def response(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        """The status and (lower-cased) headers the server answered with; None if it closed without."""
        self.sock.settimeout(timeout)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return None
                received += chunk
        except ConnectionResetError:
            return None
        status_line, *lines = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in lines)
        return int(status_line.split(" ", 2)[1]), {k.strip().lower(): v.strip() for k, v in headers.items()}

    def response_status(self, timeout: float) -> int | None:
        answer = self.response(timeout)
        return answer[0] if answer else None

    def close(self, reset: bool = False) -> None:
        """Closes; with reset=True the kernel sends RST instead of FIN, like a dropped link."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
