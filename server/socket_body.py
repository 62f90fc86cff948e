"""uvicorn's httptools protocol, plus: a request handler may take the rest of a body straight off the socket.

A body read through ASGI is copied three times in user space (the event loop's read buffer, httptools'
`bytes` per chunk, the write into the page cache) and passes through Python chunk by chunk. A handler that
takes the socket instead can `splice` the bytes from the socket into the file inside the kernel, as tusd's
`io.Copy` does, and hash them from the page cache: on this project's 2-core machine that is what separates
a server that hashes what it stores from one that does not (see bench/). The request is offered the
socket under the ASGI extension `modeldrop.socket_body`; servers without it (h11, test clients) simply do
not offer it and the handler reads through `receive` as usual.

ASGI has no way to send an interim (1xx) response either, which the resumable uploads draft's `104 Upload
Resumption Supported` is; every request on this protocol is offered `modeldrop.interim` (InterimResponses) to
write one on the connection before its final response.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from modeldrop.server.bounded_head import BoundedHeadProtocol

EXTENSION = "modeldrop.socket_body"
INTERIM = "modeldrop.interim"


@dataclasses.dataclass
class TakenBody:
    fd: int           # a duplicate of the connection's socket (non-blocking), the taker's to close
    head: bytes       # body bytes the server had already read before the handover
    remaining: int    # body bytes still on the socket after head


class SocketBody:
    """One request's offer of its socket. `take()` is called before the first `receive()`, or never."""

    def __init__(self, protocol: SocketBodyProtocol, cycle: RequestResponseCycle, content_length: int) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._content_length = content_length
        self._taken: TakenBody | None = None

    def take(self) -> TakenBody | None:
        """Stops the server reading this connection and hands the socket over; None if it cannot be."""
        protocol, cycle = self._protocol, self._cycle
        if self._taken is not None or cycle.disconnected or not cycle.more_body or protocol.cycle is not cycle:
            return None
        sock = protocol.transport.get_extra_info("socket")
        if sock is None or protocol.transport.is_closing():
            return None
        protocol.flow.pause_reading()
        if cycle.waiting_for_100_continue:
            protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        head = bytes(cycle.body)
        cycle.body = bytearray()
        # a duplicate: should the server close its own while the taker still reads, the number cannot be
        # reused for another file under the taker's feet
        self._taken = TakenBody(fd=os.dup(sock.fileno()), head=head, remaining=self._content_length - len(head))
        return self._taken

    def give_back(self, complete: bool) -> None:
        """After the handler read the body: the connection is reusable only if exactly all of it was read.

        The parser still waits for the body bytes it never saw, so a fresh one takes over at the next
        request's first byte; the server resumes reading once the response is sent. With bytes left on the
        socket the connection closes after the response instead.
        """
        if self._taken is None:
            return
        if complete:
            self._protocol.parser = self._protocol.new_parser()
        else:
            self._cycle.keep_alive = False


class InterimResponses:
    """One request's way to write 1xx interim responses ahead of its final one (call it on the event loop).

    Written through the transport, so in order with uvicorn's own writes; a pending `100 Continue` goes first
    (a 104 does not stand in for it). Nothing is written once the final response has started, to an HTTP/1.0
    client (which must not get 1xx), or on a connection that is closing.
    """

    def __init__(self, protocol: SocketBodyProtocol, cycle: RequestResponseCycle, http_version: str) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._http_version = http_version

    def send(self, status: int, reason: str, headers: Sequence[tuple[str, str]]) -> bool:
        """Writes `HTTP/1.1 <status> <reason>` and headers; False if it could not be written."""
        protocol, cycle = self._protocol, self._cycle
        if not 102 <= status < 200 or self._http_version == "1.0":  # not 100 or 101: uvicorn's own
            return False
        if cycle.response_started or cycle.disconnected or protocol.cycle is not cycle:
            return False
        if protocol.transport.is_closing():
            return False
        lines = [f"HTTP/1.1 {status} {reason}"]
        for name, value in headers:
            if any(char in f"{name}{value}" for char in "\r\n\0"):
                raise ValueError(f"interim header {name!r} has a line break")
            lines.append(f"{name}: {value}")
        if cycle.waiting_for_100_continue:
            protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        protocol.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return True


class SocketBodyProtocol(BoundedHeadProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = self.new_parser()

    def new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        try:
            parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn does
        except AttributeError:  # httptools < 0.6.3
            pass
        return parser

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is None or self.cycle.scope is not self.scope:
            return
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})  # type: ignore[assignment]
        extensions[INTERIM] = InterimResponses(self, self.cycle, self.scope["http_version"])
        content_length = self._content_length()
        if content_length is not None:
            extensions[EXTENSION] = SocketBody(self, self.cycle, content_length)

    def _content_length(self) -> int | None:
        """The body's length when it is sent with Content-Length (not chunked) and is not empty."""
        length = None
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
        return length if length else None
