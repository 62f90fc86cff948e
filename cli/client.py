"""The HTTP edge of the client: the standard library only, so it installs with the server's base deps.

`HttpClient.request` sends one request and returns the whole (small) answer; a body can be a `FileSlice`,
a range of a file that goes from the page cache to the socket with `sendfile` (plain http, HTTP/1.1 written
out in `PlainConnection`): no byte passes through Python, so the client costs the sender next to nothing
and memory stays flat whatever the file and chunk size. Over TLS, which sendfile cannot encrypt, requests
go through http.client and the body is read and sent in fixed blocks. Every failure to talk to the server
becomes one `NetworkError`, which the caller retries.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from modeldrop.cli import tus

# Bytes read from disk and handed to the socket at a time. Big enough for fast links, small enough
# that the client's memory does not depend on the file or chunk size.
BLOCK_SIZE = 1024 * 1024
# Bytes one sendfile call may move, and how often the progress bar hears of them: a few MiB, so a
# 50 GB upload makes thousands of calls rather than millions and the bar still moves smoothly.
SENDFILE_STEP = 8 * 1024 * 1024


class NetworkError(Exception):
    """The request did not get an HTTP answer: refused, reset, timed out, or cut mid-response."""


class LocalFileError(Exception):
    """Reading the file being uploaded failed; not a network problem, so never retried."""


class FileSlice:
    """`count` bytes of an open file starting at `start`: sent with `send_to` (sendfile), or read in blocks.

    Either way at most one block is ever in memory (none with sendfile). `on_read` is told how many bytes
    went out, for the progress bar: per block read, or every few MiB sent.
    """

    def __init__(self, file: BinaryIO, start: int, count: int, on_read: Callable[[int], None] | None = None):
        self._file = file
        self._position = start
        self._remaining = count
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        wanted = self._remaining if size is None or size < 0 else min(size, self._remaining)
        if wanted <= 0:
            return b""
        try:
            # pread, not seek+read: the position is ours, whatever else touched the file object
            block = os.pread(self._file.fileno(), wanted, self._position)
        except OSError as error:
            raise LocalFileError(f"cannot read {getattr(self._file, 'name', 'the file')}: {error}") from error
        if not block:
            raise LocalFileError(f"{getattr(self._file, 'name', 'the file')} became shorter while uploading")
        self._advance(len(block))
        return block

    def send_to(self, sock: socket.socket) -> None:
        """Send the whole range into a connected plain socket with sendfile: page cache to socket in the kernel.

        The socket's timeout holds as it does for `sendall`: a socket with a timeout is non-blocking
        underneath, so a full send buffer is waited for with poll, and a server that takes nothing for
        that long ends the send with TimeoutError. Errors of the connection (reset, broken pipe) are
        OSErrors, as from `sendall`.
        """
        timeout = sock.gettimeout()
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        source, unreported = self._file.fileno(), 0
        try:
            while self._remaining > 0:
                try:
                    sent = os.sendfile(sock.fileno(), source, self._position, min(self._remaining, SENDFILE_STEP))
                except BlockingIOError:
                    if not poller.poll(None if timeout is None else timeout * 1000):
                        raise TimeoutError("the server took no bytes for too long") from None
                    continue
                if sent == 0:
                    raise LocalFileError(f"{getattr(self._file, 'name', 'the file')} became shorter while uploading")
                self._position += sent
                self._remaining -= sent
                unreported += sent
                if unreported >= SENDFILE_STEP:  # one progress update per few MiB, not per call
                    self._report(unreported)
                    unreported = 0
        finally:
            self._report(unreported)

    def _advance(self, count: int) -> None:
        self._position += count
        self._remaining -= count
        self._report(count)

    def _report(self, count: int) -> None:
        if self._on_read and count:
            self._on_read(count)


class Headers(dict[str, str]):
    """An answer's headers by lowercase name; a repeated header's values joined with ", " (RFC 9110)."""

    def add(self, name: str, value: str) -> None:
        key = name.strip().lower()
        self[key] = f"{self[key]}, {value}" if key in self else value

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response:
    """An answer, read completely: tus and API answers are small (headers, a JSON document)."""

    def __init__(self, url: str, status: int, reason: str, headers: Headers, body: bytes):
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def error(self) -> tuple[str | None, str]:
        """(code, message) of an error answer."""
        return tus.error_message(self.status, self.reason, self.body)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as error:
            raise tus.ProtocolError(f"{self.url} did not answer JSON (HTTP {self.status})") from error


class BadResponse(ConnectionError):
    """What came back is not an HTTP/1.x answer we can read (or the connection ended inside one)."""


# An answer's head larger than this is not a tus server's.
MAX_HEAD = 64 * 1024


class PlainConnection:
    """HTTP/1.1 over one plain TCP connection, kept open between requests, opened again when needed.

    Written out rather than through http.client: the body must go to the socket with sendfile, and the
    command starts faster without http.client's imports (email, ssl), which counts for every upload.
    """

    def __init__(self, netloc: str, timeout: float):
        parts = urlsplit(f"//{netloc}")
        if not parts.hostname:
            raise tus.ProtocolError(f"no host in {netloc!r}")
        self.netloc, self.address, self.timeout = netloc, (parts.hostname, parts.port or 80), timeout
        self.sock: socket.socket | None = None
        self._buffer = bytearray()

    def exchange(self, method: str, target: str, headers: Mapping[str, str],
                 body: FileSlice | None) -> tuple[int, str, Headers, bytes, bool]:
        """(status, reason, headers, body, will_close) of one request."""
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer.clear()
        sock = self.sock
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
        if body is None and method in ("POST", "PUT", "PATCH") and not any(
                name.lower() == "content-length" for name in headers):
            lines.append("Content-Length: 0")
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if body is not None:
                body.send_to(sock)
        except OSError as send_error:
            # The server may have answered early and closed (a refused upload is rejected after its
            # first bytes): that answer, if it arrived, says more than the broken pipe.
            try:
                return self._answer(method)
            except OSError:
                raise send_error from None
        return self._answer(method)

    def _answer(self, method: str) -> tuple[int, str, Headers, bytes, bool]:
        while True:  # 1xx answers (100 Continue) come before the real one
            head = self._until(b"\r\n\r\n", MAX_HEAD).decode("latin-1")
            status_line, *header_lines = head.split("\r\n")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
                raise BadResponse(f"not an HTTP/1.x answer: {status_line[:80]!r}")
            headers = Headers()
            for line in header_lines:
                name, colon, value = line.partition(":")
                if colon:
                    headers.add(name, value.strip())
            status = int(code)
            if status >= 200 or status == 101:
                break
        connection = (headers.get("connection") or "").lower()
        will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        if method == "HEAD" or status in (204, 304) or status < 200:
            return status, reason, headers, b"", will_close
        if "chunked" in (headers.get("transfer-encoding") or "").lower():
            return status, reason, headers, self._chunked(), will_close
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise BadResponse(f"bad Content-Length {length!r}")
            return status, reason, headers, self._exactly(int(length)), will_close
        return status, reason, headers, self._rest(), True  # the body ends where the connection does

    def _fill(self) -> None:
        assert self.sock is not None
        block = self.sock.recv(65536)
        if not block:
            raise BadResponse("the server closed the connection before its answer was complete")
        self._buffer += block

    def _until(self, marker: bytes, limit: int) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            if len(self._buffer) > limit:
                raise BadResponse(f"an answer's head longer than {limit} bytes")
            self._fill()
        data = bytes(self._buffer[:end])
        del self._buffer[:end + len(marker)]
        return data

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = self._until(b"\r\n", 1024).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._until(b"\r\n", MAX_HEAD):  # trailers, up to the empty line
                    pass
                return bytes(body)
            body += self._exactly(size + 2)[:size]

    def _rest(self) -> bytes:
        assert self.sock is not None
        while block := self.sock.recv(65536):
            self._buffer += block
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class TlsConnection:
    """HTTPS through http.client (imported only here): the body is read and sent in blocks, since sendfile
    cannot encrypt. Its errors come out as OSErrors, as the plain connection's do."""

    def __init__(self, netloc: str, timeout: float):
        import http.client
        import ssl

        self._http = http.client
        self._connection = http.client.HTTPSConnection(netloc, timeout=timeout, blocksize=BLOCK_SIZE,
                                                       context=ssl.create_default_context())

    def exchange(self, method: str, target: str, headers: Mapping[str, str],
                 body: FileSlice | None) -> tuple[int, str, Headers, bytes, bool]:
        try:
            answer, payload = self._exchange(method, target, headers, body)
        except self._http.HTTPException as error:
            raise BadResponse(str(error) or type(error).__name__) from error
        found = Headers()
        for name, value in answer.headers.items():
            found.add(name, value)
        return answer.status, answer.reason, found, payload, bool(answer.will_close)

    def _exchange(self, method: str, target: str, headers: Mapping[str, str],
                  body: FileSlice | None) -> tuple[Any, bytes]:
        connection = self._connection
        try:
            connection.request(method, target, body=body, headers=dict(headers))
        except (OSError, self._http.HTTPException) as send_error:
            if connection.sock is None:  # the connect itself failed: there is nothing to read
                raise
            try:
                answer = connection.getresponse()
                return answer, answer.read()
            except (OSError, self._http.HTTPException):
                raise send_error from None
        answer = connection.getresponse()
        return answer, answer.read()

    def close(self) -> None:
        self._connection.close()


class HttpClient:
    """Sends requests, keeping one connection per scheme and host (a Location may name another host)."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self._connections: dict[tuple[str, str], PlainConnection | TlsConnection] = {}

    def request(self, method: str, url: str, headers: Mapping[str, str], body: FileSlice | None = None) -> Response:
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection = self._connection(parts.scheme, parts.netloc)
        reused = isinstance(connection, PlainConnection) and connection.sock is not None
        try:
            try:
                status, reason, found, payload, will_close = connection.exchange(method, target, headers, body)
            except (BadResponse, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server closed while idle: ask once more on a new one, at
                # once, when asking again cannot change anything (GET, HEAD).
                if not reused or body is not None or method not in ("GET", "HEAD"):
                    raise
                connection.close()
                status, reason, found, payload, will_close = connection.exchange(method, target, headers, body)
        except OSError as error:
            self._drop(parts.scheme, parts.netloc)
            raise NetworkError(f"{method} {url}: {describe_network_error(error)}") from error
        except BaseException:
            self._drop(parts.scheme, parts.netloc)
            raise
        if will_close:
            self._drop(parts.scheme, parts.netloc)
        return Response(url, status, reason, found, payload)

    def get_json(self, url: str, token: str | None) -> Response:
        return self.request("GET", url, tus.json_headers(token))

    def close(self) -> None:
        for key in list(self._connections):
            self._drop(*key)

    def _connection(self, scheme: str, netloc: str) -> PlainConnection | TlsConnection:
        key = (scheme, netloc)
        if key not in self._connections:
            if scheme == "https":
                self._connections[key] = TlsConnection(netloc, self.timeout)
            elif scheme == "http":
                self._connections[key] = PlainConnection(netloc, self.timeout)
            else:
                raise tus.ProtocolError(f"cannot follow a {scheme or 'scheme-less'} URL: only http and https")
        return self._connections[key]

    def _drop(self, scheme: str, netloc: str) -> None:
        connection = self._connections.pop((scheme, netloc), None)
        if connection is not None:
            connection.close()


def describe_network_error(error: BaseException) -> str:
    """Short words for what went wrong on the wire ('connection refused', 'timed out', ...)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):  # http.client's RemoteDisconnected too
        return "the connection was closed by the server"
    if isinstance(error, TimeoutError):
        return "timed out"
    ssl = sys.modules.get("ssl")  # imported only for https
    if ssl is not None and isinstance(error, ssl.SSLError):
        return f"TLS error: {error}"
    return str(error) or type(error).__name__


# ---------------------------------------------------------------- options shared by every command


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", default=None,
                        help=f"the modeldrop server (env MODELDROP_SERVER; default {tus.DEFAULT_SERVER})")
    parser.add_argument("--token", metavar="T", default=None,
                        help="bearer token the server requires (env MODELDROP_TOKEN; default: none)")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                        help="give up on a connection that sends or receives nothing for this long (default 60)")


def server_and_token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """The server URL and token from the flags, else the environment, else the defaults."""
    server = args.server or environ.get("MODELDROP_SERVER") or tus.DEFAULT_SERVER
    token = args.token or environ.get("MODELDROP_TOKEN") or None
    return tus.normalize_server_url(server), token
