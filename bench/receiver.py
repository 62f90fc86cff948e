"""The machine's loopback-into-a-file limit: recv_into a 1 MiB buffer, os.write it, ack with one byte.

    python -m bench.receiver PORT OUTPUT LENGTH       prints "ready" once listening
"""

from __future__ import annotations

import os
import socket
import sys


def main(port: int, output: str, length: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(60)
    print("ready", flush=True)
    conn, _ = listener.accept()
    conn.settimeout(120)
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    received = 0
    while received < length:
        n = conn.recv_into(buffer)
        if not n:
            break
        done = 0
        while done < n:
            done += os.write(fd, view[done:n])
        received += n
    os.close(fd)
    conn.sendall(b"k")
    conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
