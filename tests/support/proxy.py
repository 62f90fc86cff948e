"""A tiny toxiproxy: relays TCP to a server port, throttles uploads, and can cut every connection.

Real clients (tus-js-client, tuspy) send as fast as loopback allows; through this relay a test can make
them slow enough to kill the server mid-PATCH, then lift the limit so the resumed upload is quick.
The target port is looked up on each new connection, so a restarted server on the same port works.
`half_open()` drops the client side only: the server keeps a silent connection, as after a lost link.
"""

from __future__ import annotations

import socket
import threading
import time

from tests.support.processes import ServerProcess

PIECE = 64 * 1024


class Proxy:
    def __init__(self, server: ServerProcess, rate: float | None = None) -> None:
        self.server = server
        self.rate = rate                 # client→server bytes a second; None = as fast as possible
        self.forwarded = 0               # client→server bytes handed to the server's socket, all connections
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._clients: set[socket.socket] = set()
        self._kept: set[socket.socket] = set()   # server-side sockets left open and silent by half_open()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the server is down: the client sees a refused/closed connection
                continue
            with self._lock:
                self._sockets |= {client, upstream}
                self._clients.add(client)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upload: bool) -> None:
        started, moved = time.monotonic(), 0
        try:
            while True:
                rate = self.rate if upload else None
                data = source.recv(min(PIECE, int(rate // 20) or 1) if rate else PIECE)
                if not data:
                    break
                target.sendall(data)
                if upload:
                    with self._lock:
                        self.forwarded += len(data)
                    moved += len(data)
                    if rate:
                        time.sleep(max(0.0, started + moved / rate - time.monotonic()))
                    else:
                        started, moved = time.monotonic(), 0
        except OSError:
            pass
        finally:
            self._drop(source, target)

    def _drop(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self._lock:
                if sock in self._kept:
                    continue
                self._sockets.discard(sock)
                self._clients.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        """Drops every open connection, as a network failure would."""
        with self._lock:
            sockets = list(self._sockets)
        self._drop(*sockets)

    def half_open(self) -> None:
        """Drops every client connection but leaves the server's side open, never to send again."""
        with self._lock:
            clients = list(self._clients)
            self._kept |= self._sockets - self._clients
        self._drop(*clients)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            self._kept.clear()
        self.cut()
