"""The Resumable Uploads for HTTP (RUFH) test client, beside tests/support/tus.py's tus client.

    client = RufhClient(server.url)                          # interop version 9 (-12 to -15) unless told
    location = client.location(length=len(data))            # careful creation: POST /uploads/, no body
    client.append(location, data, 0, complete=True)          # PATCH application/partial-upload
    client.head(location).headers["Upload-Offset"]

Every request returns the httpx.Response. A header given as None is left out. `RawExchange` writes a request
on a socket by hand and reads every answer to it, the interim 104s included, which httpx does not show.
"""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.tus import Headers, merge_headers, unique_name, upload_id

CURRENT_INTEROP = 9
PARTIAL = "application/partial-upload"
PROBLEM = "application/problem+json"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"


def resource(upload: str) -> str:
    """`/uploads/<id>` for an upload given as its Location, path or id."""
    return f"/uploads/{upload_id(upload)}"


def disposition(name: str) -> str:
    return f'attachment; filename="{name}"'


class RufhClient:
    """`RufhClient(url)` for a real server, `RufhClient(http=app.tus.http)` for the app in process (no 104 there)."""

    def __init__(self, url: str = "", interop: int | None = CURRENT_INTEROP, token: str | None = None,
                 timeout: float = 60, *, http: Any = None) -> None:
        self.http = http if http is not None else httpx.Client(base_url=url, timeout=timeout)
        self.interop = interop
        self.token = token

    def headers(self, extra: Headers | None = None) -> dict[str, str]:
        interop = {"Upload-Draft-Interop-Version": str(self.interop)} if self.interop is not None else {}
        return merge_headers(interop, self.token, extra)

    def request(self, method: str, target: str, headers: Headers | None = None, body: Any = None) -> httpx.Response:
        return self.http.request(method, target, headers=self.headers(headers), content=body)

    def options(self, target: str = "/uploads/", headers: Headers | None = None) -> httpx.Response:
        return self.request("OPTIONS", target, headers)

    def create(self, body: bytes | None = None, *, complete: bool = False, length: int | None = None,
               name: str | None = "", headers: Headers | None = None, target: str = "/uploads/",
               method: str = "POST") -> httpx.Response:
        """An upload creation; name "" is a fresh model name, None sends no Content-Disposition."""
        sent: dict[str, str | None] = {"Upload-Complete": "?1" if complete else "?0"}
        if name is not None:
            sent["Content-Disposition"] = disposition(name or unique_name())
        if length is not None:
            sent["Upload-Length"] = str(length)
        return self.request(method, target, {**sent, **(headers or {})}, body)

    def location(self, body: bytes | None = None, **create: Any) -> str:
        response = self.create(body, **create)
        assert response.status_code == 201, response.text
        return response.headers["Location"]

    def append(self, upload: str, body: bytes, offset: int, complete: bool = False,
               headers: Headers | None = None) -> httpx.Response:
        sent = {"Content-Type": PARTIAL, "Upload-Offset": str(offset), "Upload-Complete": "?1" if complete else "?0"}
        return self.request("PATCH", resource(upload), {**sent, **(headers or {})}, body)

    def head(self, upload: str, headers: Headers | None = None) -> httpx.Response:
        return self.request("HEAD", resource(upload), headers)

    def delete(self, upload: str, headers: Headers | None = None) -> httpx.Response:
        return self.request("DELETE", resource(upload), headers)

    def offset(self, upload: str) -> int:
        response = self.head(upload)
        assert response.status_code == 204, response.status_code
        return int(response.headers["Upload-Offset"])

    def upload(self, data: bytes, chunk: int | None = None, **create: Any) -> str:
        """Careful creation, then appends of `chunk` bytes, the last one completing; the Location."""
        location = self.location(length=len(data), **create)
        step = chunk or len(data)
        for start in range(0, len(data), step):
            end = min(len(data), start + step)
            response = self.append(location, data[start:end], start, complete=end == len(data))
            assert response.status_code in (200, 204), response.text
        return location


@dataclass
class Answer:
    status: int
    headers: dict[str, str]                     # lower-cased names
    interim: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # 1xx answers before it, in order
    body: bytes = b""


class RawExchange:
    """A request written by hand (its head at once, the body as the test sends it), reading every answer."""

    def __init__(self, url: str, method: str, target: str, headers: Mapping[str, str],
                 length: int | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)
        self.buffer = b""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_slowly(self, data: bytes, seconds: float, pieces: int = 20) -> None:
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            self.sock.sendall(data[start:start + step])
            time.sleep(seconds / pieces)

    def next_head(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        """The next response head (interim or final); None if the server closed first."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError, socket.timeout):
                return None
            if not chunk:
                return None
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split(" ", 2)[1]), headers

    def answer(self, timeout: float = 30) -> Answer | None:
        """Interim answers, then the final one with its body (by Content-Length); None if the server closed."""
        interim = []
        while True:
            head = self.next_head(timeout)
            if head is None:
                return None
            status, headers = head
            if status >= 200:
                break
            interim.append(head)
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status, headers, interim, body)

    def close(self) -> None:
        self.sock.close()
