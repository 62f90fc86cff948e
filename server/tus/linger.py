"""Answering a request whose body will not be read, without the client sending all of it, and without losing the
answer: the lingering close of HTTP servers (RFC 9112 section 9.6).

A PATCH at the wrong offset (tus-js-client and Uppy PATCH at 0 after a creation the server answered with an upload
it already had: server/dedupe.py), or a creation whose body a matched upload cannot take, is answered before its
body is read. Keeping the connection would mean reading that body to its end, and a browser sends all of it (a whole
chunk, often the whole file) before it looks at the answer. Closing at once loses the answer instead: a socket
closed with unread bytes resets the connection, and the reset can overtake the answer on its way (tus-js-client in
node then waited for ever on an answer half received).

So the socket is taken from the server (socket_body.take: uvicorn stops reading it, and the connection is not kept
after the answer), the answer is sent, and then: FIN after the answer (shutdown for writing), what the client still
sends is read and dropped for at most LINGER_SECONDS or LINGER_BYTES, and only then the socket is closed. The client
has the whole answer and the end of the stream before any reset can come.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modeldrop.server import errors
from modeldrop.server.socket_body import EXTENSION as SOCKET_BODY

LINGER_SECONDS = 2.0
LINGER_BYTES = 2 * 1024 * 1024


def refuse_unread(request: Request, error: errors.HTTPError, headers: dict[str, str] | None = None) -> Response:
    """The error's answer (as the app's error handler writes it), the body left unread, the connection closed
    after the answer, lingering."""
    headers = {**error.headers, **(headers or {})}
    return answer_unread(request, JSONResponse({"error": error.code, "message": error.message},
                                               status_code=error.status, headers=headers))


def answer_unread(request: Request, response: Response) -> Response:
    """`response` for a request whose body is not read: Connection: close, and a lingering close when the server
    lent the socket (a body announced with Content-Length and not yet received in full)."""
    response.headers["Connection"] = "close"
    lent = request.scope.get("extensions", {}).get(SOCKET_BODY)
    taken = lent.take() if lent is not None else None
    if taken is not None:
        lent.give_back(complete=False)  # not kept after the answer
        response.background = BackgroundTask(linger, taken.fd)
    return response


def linger(fd: int) -> None:
    """After the answer was written: FIN, then drop what arrives for a while, then close (the socket is ours)."""
    sock = socket.socket(fileno=fd)
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            _drain(sock)
    finally:
        sock.close()


def _drain(sock: Any) -> None:
    deadline = time.monotonic() + LINGER_SECONDS
    dropped = 0
    while dropped < LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return
        try:
            data = sock.recv(256 * 1024)
        except BlockingIOError:
            continue
        if not data:
            return  # the client closed its side too
        dropped += len(data)
