"""Request heads against a real `modeldrop serve` (uvloop + httptools): bounded size and line count (431),
a deadline to finish them (dropped), memory that does not follow a client's headers, others still answered."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.processes import ServerProcess

CONNECTIONS = 1000


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def head_of(host: str = "127.0.0.1", extra: bytes = b"") -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + extra


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer with a Content-Length body."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return received


def send_and_read(port: int, data: bytes, timeout: float = 10) -> tuple[int, bool]:
    """Sends data (as far as the server lets it), then (status of the answer or 0, whether the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
        status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else 0
        return status, closed


@pytest.fixture
def many_files() -> Iterator[None]:
    """This process holds a socket per slow connection, the server one more: raise the soft fd limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTIONS * 2 + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard fd limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_200_kb_header_gets_431_and_the_connection_closes(server: ServerProcess) -> None:
    status, closed = send_and_read(server.port, head_of(extra=b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n"))
    assert (status, closed) == (431, True)


def test_20000_header_lines_get_431_and_the_connection_closes(server: ServerProcess) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
    status, closed = send_and_read(server.port, head_of(extra=lines + b"\r\n"))
    assert (status, closed) == (431, True)


def test_a_large_header_after_a_keep_alive_request_gets_431(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head_of(extra=b"\r\n"))
        assert read_answer(sock).startswith(b"HTTP/1.1 200")
        try:
            sock.sendall(head_of(extra=b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sock.recv(65536).startswith(b"HTTP/1.1 431")


def test_ordinary_heads_still_pass(server: ServerProcess) -> None:
    lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(60))
    assert send_and_read(server.port, head_of(extra=lines + b"Connection: close\r\n\r\n"))[0] == 200


def test_a_client_dribbling_its_header_is_dropped_after_the_header_timeout(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(header_timeout=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 6:
            try:
                sock.sendall(b"X-Slow: a\r\n")
                time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, "the dribbling client was still connected after 6 s"
        assert closed_after < 4


def test_a_silent_connection_is_dropped_after_the_header_timeout(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(header_timeout=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=6) as sock:
        started = time.monotonic()
        while sock.recv(65536):  # a 408 may come before the close
            pass
        assert time.monotonic() - started < 4


def test_1000_slow_heads_keep_memory_bounded_and_others_answered(
        start_server: Callable[..., ServerProcess], many_files: None) -> None:
    server = start_server(header_timeout=120)
    idle = rss_kib(server.pid)
    selector = selectors.DefaultSelector()
    sockets = []
    try:
        # each sends 160 KiB of one header that never ends, the first 1,000 connections of a flood
        filler = b"X-Slow: " + b"a" * (160 * 1024)
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.setblocking(False)
            sockets.append((sock, memoryview(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + filler)))
        pending = {sock.fileno(): (sock, rest) for sock, rest in sockets}
        for sock, _ in sockets:
            selector.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                sock, rest = pending[key.fd]
                try:
                    sent = sock.send(rest)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    sent = len(rest)
                rest = rest[sent:]
                if rest:
                    pending[key.fd] = (sock, rest)
                else:
                    selector.unregister(sock)
                    del pending[key.fd]
        time.sleep(1)
        flooded = rss_kib(server.pid)
        assert flooded - idle < 48 * 1024, f"RSS grew from {idle} to {flooded} KiB"
        for sock, _ in sockets:
            sock.close()
        selector.close()
        sockets.clear()

        # then 1,000 that stay within the bounds, each a short header line sent and nothing more
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000)
            sockets.append((sock, memoryview(b"")))
        time.sleep(1)
        held = rss_kib(server.pid)
        assert held - idle < 48 * 1024, f"RSS grew from {idle} to {held} KiB with {CONNECTIONS} slow connections"
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 1.0
    finally:
        for sock, _ in sockets:
            sock.close()


def test_the_server_raises_its_own_open_file_limit(start_server: Callable[..., ServerProcess]) -> None:
    """A soft limit of 1,024 (systemd's default) would make accept() fail before --header-timeout frees a slot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard fd limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        server = start_server()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with open(f"/proc/{server.pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    assert int(line.split()[3]) >= 4096, line
