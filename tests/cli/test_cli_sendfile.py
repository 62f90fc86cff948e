"""The PATCH body sent with sendfile: bytes exact, timeouts kept, and a connection cut mid-send resumed.

The unit tests use socket pairs and a one-request HTTP server in a thread; the last test runs the real
CLI against the real server through a proxy that cuts the first PATCH's connection after some MiB.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldrop.cli.client import SENDFILE_STEP, FileSlice, HttpClient, LocalFileError
from tests.ggufgen import write_sparse_model
from tests.support.cli import installed_file, run_cli
from tests.support.models import sha256_of
from tests.support.processes import ServerProcess

MIB = 1024 * 1024


def _data(path: Path, size: int) -> bytes:
    data = hashlib.shake_256(b"modeldrop").digest(size)
    path.write_bytes(data)
    return data


def _drain(sock: socket.socket, into: bytearray, count: int) -> None:
    while len(into) < count and (block := sock.recv(1 << 20)):
        into += block


def test_send_to_sends_exactly_its_range_and_reports_progress(tmp_path: Path) -> None:
    data = _data(tmp_path / "data.bin", 3 * SENDFILE_STEP + 12345)
    start, count = 777, 2 * SENDFILE_STEP + 5000
    sender, receiver = socket.socketpair()
    sender.settimeout(10)  # non-blocking underneath: the send buffer fills and is waited for with poll
    received = bytearray()
    reader = threading.Thread(target=_drain, args=(receiver, received, count))
    reader.start()
    reported: list[int] = []
    with open(tmp_path / "data.bin", "rb") as handle:
        FileSlice(handle, start, count, reported.append).send_to(sender)
    reader.join(10)
    sender.close()
    receiver.close()

    assert bytes(received) == data[start:start + count]
    assert sum(reported) == count
    assert len(reported) <= count // SENDFILE_STEP + 1  # every few MiB, not per sendfile call


def test_send_to_keeps_the_sockets_timeout(tmp_path: Path) -> None:
    _data(tmp_path / "data.bin", 16 * MIB)
    sender, receiver = socket.socketpair()  # nobody reads: the buffer fills and nothing more goes
    sender.settimeout(0.3)
    reported: list[int] = []
    with open(tmp_path / "data.bin", "rb") as handle, pytest.raises(TimeoutError):
        FileSlice(handle, 0, 16 * MIB, reported.append).send_to(sender)
    sender.close()
    receiver.close()
    assert 0 < sum(reported) < 16 * MIB  # what did go out is still counted


def test_send_to_notices_a_file_that_shrank(tmp_path: Path) -> None:
    _data(tmp_path / "data.bin", 1000)
    sender, receiver = socket.socketpair()
    sender.settimeout(5)
    with open(tmp_path / "data.bin", "rb") as handle, pytest.raises(LocalFileError, match="shorter"):
        FileSlice(handle, 500, 1000).send_to(sender)
    sender.close()
    receiver.close()


@pytest.fixture
def one_answer_server() -> Iterator[tuple[int, dict[str, bytes]]]:
    """A server that reads one request with a Content-Length body, answers 204 and keeps what it got."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: dict[str, bytes] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(65536)
            head, body = buffer.split(b"\r\n\r\n", 1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            collected = bytearray(body)
            _drain(conn, collected, length)
            got["head"], got["body"] = head, bytes(collected)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nUpload-Offset: %d\r\n\r\n" % length)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], got
    thread.join(10)
    listener.close()


def test_a_patch_goes_out_with_its_headers_and_the_file_range(tmp_path: Path,
                                                              one_answer_server: tuple[int, dict[str, bytes]]) -> None:
    port, got = one_answer_server
    data = _data(tmp_path / "data.bin", 5 * MIB + 3)
    client = HttpClient(timeout=10)
    with open(tmp_path / "data.bin", "rb") as handle:
        response = client.request("PATCH", f"http://127.0.0.1:{port}/files/x",
                                  {"Content-Length": str(4 * MIB), "Upload-Offset": "1"},
                                  FileSlice(handle, 1, 4 * MIB))
    client.close()

    assert response.status == 204 and response.header("Upload-Offset") == str(4 * MIB)
    assert got["head"].startswith(b"PATCH /files/x HTTP/1.1\r\n")
    assert b"\r\nUpload-Offset: 1" in got["head"] and b"Accept-Encoding" not in got["head"]
    assert got["body"] == data[1:1 + 4 * MIB]


class CuttingProxy:
    """Forwards TCP to the server; the first connection that carries more than `cut_after` bytes upstream
    is reset there (SO_LINGER 0), both ways. It records each request line and Upload-Offset it forwards."""

    def __init__(self, upstream_port: int, cut_after: int):
        self.upstream_port, self.cut_after = upstream_port, cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.patch_offsets: list[int] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._upstream, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _upstream(self, client: socket.socket, upstream: socket.socket) -> None:
        forwarded = 0
        try:
            while block := client.recv(1 << 20):
                for line in block.split(b"\r\n"):
                    if line.lower().startswith(b"upload-offset:") and b"PATCH " in block:
                        self.patch_offsets.append(int(line.split(b":")[1]))
                if self.cuts == 0 and forwarded + len(block) > self.cut_after:
                    self.cuts += 1
                    for sock in (client, upstream):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        sock.close()
                    return
                upstream.sendall(block)
                forwarded += len(block)
        except OSError:
            pass
        for sock in (client, upstream):
            sock.close()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while block := source.recv(1 << 16):
                target.sendall(block)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def test_a_connection_cut_mid_sendfile_resumes_from_the_servers_offset(server: ServerProcess, tmp_path: Path,
                                                                      client_env: dict[str, str]) -> None:
    model = write_sparse_model(tmp_path / "Cut-Q4_K_M.gguf", size_gib=0.1)
    with open(model, "r+b") as handle:  # fill the sparse tail, so a misplaced byte cannot hide among zeros
        size = os.fstat(handle.fileno()).st_size
        os.pwrite(handle.fileno(), hashlib.shake_256(b"tail").digest(size // 2), size // 2)
    proxy = CuttingProxy(server.port, cut_after=24 * MIB)
    try:
        result = run_cli(client_env, "upload", str(model), "--server", f"http://127.0.0.1:{proxy.port}",
                         "--retry-delay", "0.1")
    finally:
        proxy.close()

    assert result.returncode == 0, result.stdout + result.stderr
    assert proxy.cuts == 1
    assert "retry 1/" in result.stderr and "continuing from there" in result.stderr
    assert proxy.patch_offsets[0] == 0 and len(proxy.patch_offsets) == 2, proxy.patch_offsets
    assert 0 < proxy.patch_offsets[1] <= 24 * MIB  # the second PATCH starts at the server's offset, not at 0
    assert result.stdout.startswith("installed Cut-Q4_K_M.gguf")
    assert sha256_of(installed_file(server, model.name)) == sha256_of(model)


def _scripted_server(answers: list[list[bytes]]) -> tuple[int, list[bytes], threading.Thread]:
    """Serves connection i with answers[i]: one answer per request head read, then closes the connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []

    def serve() -> None:
        for script in answers:
            conn, _ = listener.accept()
            with conn:
                for answer in script:
                    buffer = b""
                    while b"\r\n\r\n" not in buffer:
                        buffer += conn.recv(65536)
                    heads.append(buffer)
                    conn.sendall(answer)
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], heads, thread


def test_a_chunked_answer_is_read_whole_and_connection_close_is_obeyed() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Twice: a\r\nx-twice: b\r\n\r\nok"
    port, heads, thread = _scripted_server([[chunked], [plain]])
    client = HttpClient(timeout=5)

    first = client.request("GET", f"http://127.0.0.1:{port}/a", {})
    second = client.request("GET", f"http://127.0.0.1:{port}/b?q=1", {})  # a new connection: the first was closed
    client.close()
    thread.join(5)

    assert first.status == 200 and first.body == b"hello, world"
    assert second.body == b"ok" and second.header("X-TWICE") == "a, b"
    assert heads[1].startswith(b"GET /b?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")


def test_a_kept_alive_connection_closed_while_idle_is_replaced_at_once() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    port, heads, thread = _scripted_server([[answer], [answer]])  # the server closes after each answer
    client = HttpClient(timeout=5)

    client.request("GET", f"http://127.0.0.1:{port}/", {})
    again = client.request("HEAD", f"http://127.0.0.1:{port}/", {})  # no NetworkError, no retry wait
    client.close()
    thread.join(5)

    assert again.status == 200 and len(heads) == 2


def test_over_tls_the_body_goes_in_blocks_and_arrives_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sendfile cannot encrypt: https goes through http.client, the body read and sent in blocks."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a throwaway certificate")
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client's default context trusts it, and only it
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    got: dict[str, bytes] = {}

    def serve() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as conn:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += conn.recv(65536)
            head, body = buffer.split(b"\r\n\r\n", 1)
            collected = bytearray(body)
            _drain(conn, collected, 3 * MIB)
            got["head"], got["body"] = head, bytes(collected)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nUpload-Offset: 7\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    data = _data(tmp_path / "data.bin", 3 * MIB + 10)
    reported: list[int] = []
    client = HttpClient(timeout=10)
    with open(tmp_path / "data.bin", "rb") as handle:
        response = client.request("PATCH", f"https://127.0.0.1:{listener.getsockname()[1]}/files/t",
                                  {"Content-Length": str(3 * MIB)}, FileSlice(handle, 10, 3 * MIB, reported.append))
    client.close()
    thread.join(10)
    listener.close()

    assert response.status == 204 and response.header("upload-offset") == "7"
    assert got["body"] == data[10:10 + 3 * MIB] and sum(reported) == 3 * MIB
