"""uvicorn's httptools protocol with bounds on a request's head: its size, its lines and the time it takes.

uvicorn applies `h11_max_incomplete_event_size` to h11 only: with httptools a header is buffered whole until
it ends, however long it is, and a connection that sends a header line every few seconds stays open forever
(every byte cancels the keep-alive timer, nothing else watches it). Here the request line and headers are
counted as the parser reports them, and a timer armed when a connection opens or a request's first byte
arrives is disarmed when its headers are complete. Above the bounds the client gets 431 and the connection
closes; after the deadline, 408 and the connection closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modeldrop.server import errors
from modeldrop.server.settings import KIB, Settings


@dataclasses.dataclass(frozen=True)
class HeadLimits:
    max_bytes: int = 32 * KIB
    max_lines: int = 100
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        return cls(settings.max_header_size, settings.max_header_lines, settings.header_timeout)


class _HeadTooLarge(Exception):
    """Raised inside a parser callback: llhttp stops at once and feed_data raises with this as the context."""


class BoundedHeadProtocol(HttpToolsProtocol):
    limits = HeadLimits()

    @classmethod
    def with_limits(cls, limits: HeadLimits) -> type[BoundedHeadProtocol]:
        # uvicorn builds protocols from a class, so the settings travel as a class attribute
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._reading_head = False
        self._head_bytes = 0   # request line and header fields the parser reported
        self._head_lines = 0
        self._head_reads = 0   # bytes read while a head was unfinished: httptools buffers a header until it
        #                        ends, so a never-ending one is seen only here
        self._begun_in_feed = 0

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte holds a slot as surely as a slow one

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        in_head = self._reading_head
        at_boundary = not in_head and (self.cycle is None or not self.cycle.more_body)
        self._begun_in_feed = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(errors.HeadersTooLarge(self._too_large_message()))
                return
            self._invalid_request()
            return
        except httptools.HttpParserError:
            self._invalid_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if not self._reading_head:
            return
        # the whole read counts when all of it belongs to the unfinished head; when an earlier message ended
        # inside it, the share is unknown and it is left out (one read, at most 256 KiB, goes uncounted)
        if (in_head and self._begun_in_feed == 0) or (at_boundary and self._begun_in_feed == 1):
            self._head_reads += len(data)
        if self._head_reads > self.limits.max_bytes:
            self._refuse(errors.HeadersTooLarge(self._too_large_message()))

    def _invalid_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = self._head_lines = self._head_reads = 0
        self._begun_in_feed += 1
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def _count(self, size: int, lines: int) -> None:
        self._head_bytes += size
        self._head_lines += lines
        if self._head_bytes > self.limits.max_bytes or self._head_lines > self.limits.max_lines:
            raise _HeadTooLarge()

    # -- refusing -----------------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self._refuse(errors.RequestTimeout(f"the request's headers did not arrive within {self.limits.timeout:g} "
                                           "seconds; the connection is closed"))

    def _too_large_message(self) -> str:
        return (f"the request's headers are larger than this server accepts ({self.limits.max_bytes} bytes, "
                f"{self.limits.max_lines} lines): send fewer or shorter headers")

    def _refuse(self, error: errors.HTTPError) -> None:
        """Answers and closes, unless an earlier request's answer is still being written (then just closes)."""
        self._reading_head = False
        self._disarm_head_timer()
        # the old parser holds the header buffered so far until the transport reports the close, a loop
        # iteration later: with many connections refused in one iteration that adds up
        self.parser = httptools.HttpRequestParser(self)
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps({"error": error.code, "message": error.message}).encode()
            content = [STATUS_LINE[error.status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"content-type: application/json\r\n",
                            b"content-length: " + str(len(body)).encode() + b"\r\n",
                            b"connection: close\r\n\r\n", body])
            self.transport.write(b"".join(content))
        self.transport.close()
