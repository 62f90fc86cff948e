"""The HTTP edge of the client: standard-library `http.client` only, so it installs with the server's base deps.

`HttpClient.request` sends one request and returns the whole (small) answer; a body can be a `FileSlice`,
a range of a file that goes from the page cache to the socket with `sendfile` (plain http): no byte passes
through Python, so the client costs the sender next to nothing and memory stays flat whatever the file and
chunk size (over TLS, which sendfile cannot encrypt, it is read and sent in fixed blocks instead). Every
failure to talk to the server becomes one `NetworkError`, which the caller retries.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from cli import tus

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


class Response:
    """An answer, read completely: tus and API answers are small (headers, a JSON document)."""

    def __init__(self, url: str, status: int, reason: str, headers: http.client.HTTPMessage, body: bytes):
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


class HttpClient:
    """Sends requests, keeping one connection per scheme and host (a Location may name another host)."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self._connections: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def request(self, method: str, url: str, headers: Mapping[str, str], body: FileSlice | None = None) -> Response:
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection = self._connection(parts.scheme, parts.netloc)
        try:
            answer, payload = self._exchange(connection, method, target, headers, body)
        except (OSError, http.client.HTTPException) as error:
            self._drop(parts.scheme, parts.netloc)
            raise NetworkError(f"{method} {url}: {describe_network_error(error)}") from error
        except BaseException:
            self._drop(parts.scheme, parts.netloc)
            raise
        if answer.will_close:
            self._drop(parts.scheme, parts.netloc)
        return Response(url, answer.status, answer.reason, answer.headers, payload)

    @staticmethod
    def _exchange(connection: http.client.HTTPConnection, method: str, target: str, headers: Mapping[str, str],
                  body: FileSlice | None) -> tuple[http.client.HTTPResponse, bytes]:
        try:
            if body is None:
                connection.request(method, target, headers=dict(headers))
            else:
                HttpClient._send_body(connection, method, target, headers, body)
        except (OSError, http.client.HTTPException) as send_error:
            # The server may have answered early and closed (a refused upload is rejected after its
            # first bytes): that answer, if it arrived, says more than the broken pipe. Without a
            # socket (the connect itself failed) there is nothing to read.
            if connection.sock is None:
                raise
            try:
                answer = connection.getresponse()
                return answer, answer.read()
            except (OSError, http.client.HTTPException):
                raise send_error from None
        answer = connection.getresponse()
        return answer, answer.read()

    @staticmethod
    def _send_body(connection: http.client.HTTPConnection, method: str, target: str, headers: Mapping[str, str],
                   body: FileSlice) -> None:
        """The request line and headers through http.client (it connects, and reads the answer later), then
        the body straight from the file: with sendfile on a plain socket, in blocks over TLS."""
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        sock = connection.sock
        if isinstance(sock, ssl.SSLSocket):
            while block := body.read(BLOCK_SIZE):
                sock.sendall(block)
        else:
            body.send_to(sock)

    def get_json(self, url: str, token: str | None) -> Response:
        return self.request("GET", url, tus.json_headers(token))

    def close(self) -> None:
        for key in list(self._connections):
            self._drop(*key)

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        if key not in self._connections:
            if scheme == "https":
                self._connections[key] = http.client.HTTPSConnection(
                    netloc, timeout=self.timeout, blocksize=BLOCK_SIZE, context=ssl.create_default_context())
            elif scheme == "http":
                self._connections[key] = http.client.HTTPConnection(netloc, timeout=self.timeout,
                                                                    blocksize=BLOCK_SIZE)
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
    if isinstance(error, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "the connection was closed by the server"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
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
