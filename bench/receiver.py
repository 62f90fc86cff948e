"""The machine's loopback limits: recv_into a 1 MiB buffer, os.write it (unless OUTPUT is -), ack with one byte.

    python -m bench.receiver PORT OUTPUT LENGTH [--sha256]      prints "ready" once listening

With OUTPUT - the bytes are only received (and with --sha256 hashed), nothing stored: loopback TCP's own
limit, or with the hash the CPU's; the count received is printed at the end. With --sha256 a second thread hashes each buffer while the next one is received and
written, as a server that verifies what it stores must, and the digest is printed at the end: the most any
such server could do on this machine, with no HTTP, no framework and no copies besides the kernel's.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import sys
import threading

BUFFER = 1024 * 1024
BUFFERS = 8  # received and waiting for the hash, so a late hash does not stop the socket at once


def main(port: int, output: str, length: int, sha256: bool = False) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(60)
    print("ready", flush=True)
    conn, _ = listener.accept()
    conn.settimeout(120)
    fd = None if output == "-" else os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    filled: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
    for _ in range(BUFFERS if sha256 else 1):
        free.put(bytearray(BUFFER))
    hasher = hashlib.sha256()

    def hash_filled() -> None:
        while (item := filled.get()) is not None:
            hasher.update(memoryview(item[0])[: item[1]])
            free.put(item[0])

    hashing = threading.Thread(target=hash_filled)
    if sha256:
        hashing.start()
    received = 0
    while received < length:
        buffer = free.get()
        view = memoryview(buffer)
        n = conn.recv_into(buffer)
        if not n:
            break
        done = 0 if fd is not None else n
        while done < n:
            done += os.write(fd, view[done:n])
        received += n
        if sha256:
            filled.put((buffer, n))
        else:
            free.put(buffer)
    if fd is not None:
        os.close(fd)
    else:
        print(received, flush=True)
    if sha256:
        filled.put(None)
        hashing.join()
        print(hasher.hexdigest(), flush=True)
    conn.sendall(b"k")
    conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), "--sha256" in sys.argv[4:])
