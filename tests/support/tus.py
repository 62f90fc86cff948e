"""A tiny tus 1.0 test client (httpx) and helpers for tests that talk to a real `modeldrop serve`.

    client = TusClient(server.url)
    created = client.create(len(data))                  # POST, filename metadata filled in
    client.patch(created.headers["Location"], data, 0)  # PATCH
    client.head(location).headers["Upload-Offset"]

Every call returns the httpx.Response, so tests assert status codes and headers themselves. A header
given as None is left out of the request (to test a missing Tus-Resumable, say).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ggufgen import write_model
from tests.support.processes import ServerProcess, wait_for

TUS_VERSION = "1.0.0"
PATCH_TYPE = "application/offset+octet-stream"
Headers = Mapping[str, str | None]


# -- servers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(directory: Path, **options: Any) -> Iterator[ServerProcess]:
    """A real server for a whole module (the conftest `server` fixture starts one per test)."""
    server = ServerProcess(directory / "data", directory / "server.log", **options)
    try:
        yield server.start()
    finally:
        server.stop(timeout=5)


def module_server(**options: Any) -> Any:
    """`server = module_server(fsync=False)` in a test module: one server shared by its tests."""

    @pytest.fixture(scope="module")
    def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
        with running_server(tmp_path_factory.mktemp("tus"), **options) as running:
            yield running

    return server


@pytest.fixture
def client(server: ServerProcess) -> TusClient:
    """A client for the module's `server` fixture: `from tests.support.tus import client`."""
    return TusClient(server.url)


# -- data -----------------------------------------------------------------------------------------


def gguf_bytes(tensors: int = 2, tensor_elems: int = 64) -> bytes:
    """A complete, valid GGUF model of a few KB, as bytes."""
    with tempfile.TemporaryDirectory() as directory:
        return write_model(Path(directory) / "model.gguf", tensors=tensors, tensor_elems=tensor_elems).read_bytes()


def unique_name(prefix: str = "model") -> str:
    """A fresh model file name: a name already installed would be refused with 409."""
    return f"{prefix}-{secrets.token_hex(4)}.gguf"


def encode_metadata(values: Mapping[str, str]) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
                    for key, value in values.items())


def upload_id(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def data_path(server: ServerProcess, upload: str) -> Path:
    """The staged bytes of an upload (id or URL)."""
    return server.staging_dir / "uploads" / f"{upload_id(upload)}.bin"


def stored_files(server: ServerProcess) -> list[str]:
    directory = server.staging_dir / "uploads"
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"])


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """The status, the JSON `error` code (not for HEAD, which has no body) and Tus-Resumable (C1)."""
    assert response.status_code == status, response.text
    if code is not None:
        assert error_code(response) == code
    if response.request.url.path.startswith("/files"):
        assert response.headers["Tus-Resumable"] == TUS_VERSION


@contextlib.contextmanager
def nothing_stored(server: ServerProcess) -> Iterator[None]:
    """The block's requests must leave the staging store exactly as it was."""
    settle()  # earlier requests' checkpoints are written after their answers
    before = {name: (server.staging_dir / "uploads" / name).stat().st_size for name in stored_files(server)}
    yield
    settle()
    after = {name: (server.staging_dir / "uploads" / name).stat().st_size for name in stored_files(server)}
    assert after == before


# -- the client -----------------------------------------------------------------------------------


class TusClient:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.token = token

    def headers(self, extra: Headers | None = None) -> dict[str, str]:
        merged: dict[str, str | None] = {"Tus-Resumable": TUS_VERSION}
        if self.token is not None:
            merged["Authorization"] = f"Bearer {self.token}"
        for name, value in (extra or {}).items():
            for existing in [key for key in merged if key.lower() == name.lower()]:
                del merged[existing]
            merged[name] = value
        return {name: value for name, value in merged.items() if value is not None}

    def request(self, method: str, target: str, headers: Headers | None = None, body: Any = None) -> httpx.Response:
        return self.http.request(method, target, headers=self.headers(headers), content=body)

    def options(self, target: str = "/files/", headers: Headers | None = None) -> httpx.Response:
        return self.request("OPTIONS", target, {"Tus-Resumable": None, **(headers or {})})

    def create(self, length: int | None = None, *, metadata: Mapping[str, str] | None = None,
               headers: Headers | None = None, body: Any = None) -> httpx.Response:
        """POST; length None defers it. Metadata defaults to a fresh `filename`; {} sends none."""
        values = {"filename": unique_name()} if metadata is None else metadata
        sent: dict[str, str | None] = {}
        if values:
            sent["Upload-Metadata"] = encode_metadata(values)
        if length is None:
            sent["Upload-Defer-Length"] = "1"
        else:
            sent["Upload-Length"] = str(length)
        if body is not None:
            sent["Content-Type"] = PATCH_TYPE
        return self.request("POST", "/files/", {**sent, **(headers or {})}, body)

    def location(self, length: int | None = None, **kwargs: Any) -> str:
        """create(), asserting 201; returns the Location."""
        response = self.create(length, **kwargs)
        assert response.status_code == 201, response.text
        return response.headers["Location"]

    def patch(self, target: str, body: Any, offset: int, headers: Headers | None = None) -> httpx.Response:
        sent = {"Content-Type": PATCH_TYPE, "Upload-Offset": str(offset), **(headers or {})}
        return self.request("PATCH", target, sent, body)

    def head(self, target: str, headers: Headers | None = None) -> httpx.Response:
        return self.request("HEAD", target, headers)

    def delete(self, target: str, headers: Headers | None = None) -> httpx.Response:
        return self.request("DELETE", target, headers)

    def offset(self, target: str) -> int:
        response = self.head(target)
        assert response.status_code == 200, response.status_code
        return int(response.headers["Upload-Offset"])

    def upload(self, data: bytes, chunk: int | None = None, **create: Any) -> str:
        """Creates an upload and sends all of data (in chunks of `chunk` bytes); returns the Location."""
        location = self.location(len(data), **create)
        step = chunk or len(data)
        for start in range(0, len(data), step):
            response = self.patch(location, data[start:start + step], start)
            assert response.status_code == 204, response.text
        return location

    def status(self, target: str) -> dict[str, Any]:
        response = self.http.get(f"/api/uploads/{upload_id(target)}", headers=self.headers())
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_state(self, target: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        """Polls GET /api/uploads/<id> until its state is one of states."""
        return dict(wait_for(lambda: (lambda s: s if s["state"] in states else None)(self.status(target)),
                             timeout, f"upload {upload_id(target)} to reach {states}", interval=0.1))


# -- raw sockets: bodies that stop half way ---------------------------------------------------------


def send_truncated(server: ServerProcess, method: str, path: str, headers: Mapping[str, str], body: bytes,
                   content_length: int, then: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """Sends a request announcing content_length body bytes but only `body`; returns the open socket."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Length: {content_length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    if then is not None:
        then(sock)
    return sock


def read_status_line(sock: socket.socket) -> int:
    """The status of the response on sock (reads until the status line arrived)."""
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return int(received.split(b" ", 2)[1])


def wait_offset(client: TusClient, target: str, offset: int, timeout: float = 10) -> None:
    wait_for(lambda: client.offset(target) == offset, timeout, f"offset {offset} of {upload_id(target)}")


def settle(seconds: float = 0.2) -> None:
    """Lets the server finish what a dropped request started, for checks that something did NOT happen."""
    time.sleep(seconds)
