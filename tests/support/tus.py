"""The one tus 1.0 test client (httpx) and the helpers every test that speaks tus shares.

    client = TusClient(server.url)                      # a real `modeldrop serve`, or the app in process
    created = client.create(len(data))                  # POST, filename metadata filled in
    client.patch(created.headers["Location"], data, 0)  # PATCH
    client.head(location).headers["Upload-Offset"]
    location = client.upload_file(path)                 # a file from disk, in chunks
    client.wait_state(location, "installed", "failed")  # GET /api/uploads/<id> until then

Every request returns the httpx.Response, so tests assert status codes and headers themselves. A header
given as None is left out of the request (to test a missing Tus-Resumable, say). An upload is named by its
Location, its path or its bare id, whichever the test holds.

For what no client library sends (a body that stops half way, a sender that stalls with the socket open, a
header httpx would refuse), `RawRequest` writes the request on a socket by hand and `raw_request` sends one
with header values as given.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import secrets
import socket
import struct
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from tests.ggufgen import write_model
from tests.support.processes import ServerProcess, wait_for

TUS_VERSION = "1.0.0"
PATCH_TYPE = "application/offset+octet-stream"
CHUNK = 64 * 1024 * 1024  # upload_file's PATCH size
Headers = Mapping[str, str | None]


class Staging(Protocol):
    """What the helpers below need of a server: a real process (ServerProcess) or the app in process."""

    @property
    def staging_dir(self) -> Path: ...


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


# -- bodies and names ------------------------------------------------------------------------------


@functools.cache
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


# -- uploads by id, URL or path ---------------------------------------------------------------------


def upload_id(upload: str) -> str:
    """The id of an upload given as its Location, its path or the id itself."""
    return upload.rstrip("/").rsplit("/", 1)[-1]


def upload_path(upload: str) -> str:
    """`/files/<id>` for an id; a Location or a path as given."""
    return upload if "/" in upload else f"/files/{upload}"


def on(server: ServerProcess, upload: str) -> str:
    """The same upload, addressed through another server (or proxy) sharing the data directory."""
    return f"{server.url}/files/{upload_id(upload)}"


def data_path(server: Staging, upload: str) -> Path:
    """The staged bytes of an upload (id or URL)."""
    return server.staging_dir / "uploads" / f"{upload_id(upload)}.bin"


def stored_bytes(server: Staging, upload: str) -> bytes:
    """What the staging store holds for an unfinished upload: its length is the offset."""
    return data_path(server, upload).read_bytes()


def stored_size(server: Staging, upload: str) -> int:
    """The staged length, 0 once the file is gone (installed or deleted)."""
    try:
        return data_path(server, upload).stat().st_size
    except FileNotFoundError:
        return 0


def stored_files(server: Staging) -> list[str]:
    directory = server.staging_dir / "uploads"
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


@contextlib.contextmanager
def nothing_stored(server: Staging) -> Iterator[None]:
    """The block's requests must leave the staging store exactly as it was."""
    settle()  # earlier requests' checkpoints are written after their answers
    before = {name: (server.staging_dir / "uploads" / name).stat().st_size for name in stored_files(server)}
    yield
    settle()
    after = {name: (server.staging_dir / "uploads" / name).stat().st_size for name in stored_files(server)}
    assert after == before


# -- answers --------------------------------------------------------------------------------------


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"])


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """The status, the JSON `error` code (not for HEAD, which has no body) and Tus-Resumable (C1)."""
    assert response.status_code == status, response.text
    if code is not None:
        assert error_code(response) == code
    if response.request.url.path.startswith("/files"):
        assert response.headers["Tus-Resumable"] == TUS_VERSION


# -- the client -----------------------------------------------------------------------------------


def merge_headers(base: Headers, token: str | None, extra: Headers | None) -> dict[str, str]:
    """A client's own headers, its token, then the request's: a name given again (in any case) replaces the
    earlier one, and a header given as None is left out."""
    merged: dict[str, str | None] = dict(base)
    if token is not None:
        merged["Authorization"] = f"Bearer {token}"
    for name, value in (extra or {}).items():
        for existing in [key for key in merged if key.lower() == name.lower()]:
            del merged[existing]
        merged[name] = value
    return {name: value for name, value in merged.items() if value is not None}


class TusClient:
    """tus and the status API over httpx: `TusClient(url)` for a real server, `TusClient(http=...)` for any
    httpx-like client (tests/support/app.py passes one that calls the app in process)."""

    def __init__(self, url: str = "", token: str | None = None, timeout: float = 60, *, http: Any = None) -> None:
        self.http = http if http is not None else httpx.Client(base_url=url, timeout=timeout)
        self.token = token

    def headers(self, extra: Headers | None = None) -> dict[str, str]:
        return merge_headers({"Tus-Resumable": TUS_VERSION}, self.token, extra)

    def request(self, method: str, target: str, headers: Headers | None = None, body: Any = None) -> httpx.Response:
        return self.http.request(method, target, headers=self.headers(headers), content=body)

    # -- tus ------------------------------------------------------------------------------------------

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

    def patch(self, upload: str, body: Any, offset: int, headers: Headers | None = None) -> httpx.Response:
        sent = {"Content-Type": PATCH_TYPE, "Upload-Offset": str(offset), **(headers or {})}
        return self.request("PATCH", upload_path(upload), sent, body)

    def head(self, upload: str, headers: Headers | None = None) -> httpx.Response:
        return self.request("HEAD", upload_path(upload), headers)

    def delete(self, upload: str, headers: Headers | None = None) -> httpx.Response:
        return self.request("DELETE", upload_path(upload), headers)

    def offset(self, upload: str) -> int:
        """HEAD, asserting 200; the Upload-Offset."""
        response = self.head(upload)
        assert response.status_code == 200, f"HEAD {upload} answered {response.status_code}"
        return int(response.headers["Upload-Offset"])

    def upload(self, data: bytes, chunk: int | None = None, **create: Any) -> str:
        """Creates an upload and sends all of data (in chunks of `chunk` bytes); returns the Location."""
        location = self.location(len(data), **create)
        step = chunk or len(data)
        for start in range(0, len(data), step):
            response = self.patch(location, data[start:start + step], start)
            assert response.status_code == 204, response.text
        return location

    def send_file(self, upload: str, path: Path, chunk: int = CHUNK, offset: int = 0,
                  between: Callable[[int], None] | None = None) -> httpx.Response:
        """PATCHes the file from `offset` in `chunk`-sized requests, stopping at the first answer that is not
        204 (which it returns); `between(offset)` runs between two requests."""
        size = path.stat().st_size
        response: httpx.Response | None = None
        with open(path, "rb") as source:
            source.seek(offset)
            while offset < size:
                response = self.patch(upload, source.read(chunk), offset)
                if response.status_code != 204:
                    return response
                offset = int(response.headers["Upload-Offset"])
                if between is not None and offset < size:
                    between(offset)
        assert response is not None, f"{path} is empty"
        return response

    def upload_file(self, path: Path, filename: str | None = None, sha256: str | None = None,
                    chunk: int = CHUNK) -> str:
        """Creates an upload of the file (named as the file unless `filename`) and sends it; the Location."""
        metadata = {"filename": filename or path.name, **({"sha256": sha256} if sha256 else {})}
        location = self.location(path.stat().st_size, metadata=metadata)
        response = self.send_file(location, path, chunk)
        assert response.status_code == 204, response.text
        return location

    # -- the status API -------------------------------------------------------------------------------

    def get_json(self, path: str) -> Any:
        response = self.http.get(path, headers=self.headers())
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def status(self, upload: str) -> dict[str, Any]:
        """GET /api/uploads/<id>, asserting 200."""
        return dict(self.get_json(f"/api/uploads/{upload_id(upload)}"))

    def try_status(self, upload: str) -> dict[str, Any] | None:
        """The status, or None while the server does not answer it (down, restarting)."""
        try:
            response = self.http.get(f"/api/uploads/{upload_id(upload)}", headers=self.headers())
        except httpx.TransportError:
            return None
        return dict(response.json()) if response.status_code == 200 else None

    def try_offset(self, upload: str) -> int | None:
        """The Upload-Offset of a HEAD, or None while the server does not answer it."""
        try:
            response = self.head(upload)
        except httpx.TransportError:
            return None
        return int(response.headers["Upload-Offset"]) if response.status_code == 200 else None

    def wait_state(self, upload: str, *states: str, timeout: float = 30, interval: float = 0.1,
                   seen: list[str] | None = None, through_restarts: bool = False) -> dict[str, Any]:
        """Polls GET /api/uploads/<id> until its state is one of states; appends every new state to `seen`.
        through_restarts: a server that does not answer (restarting) is waited for instead of failing."""
        last: dict[str, Any] = {}

        def reached() -> bool:
            status = self.try_status(upload) if through_restarts else self.status(upload)
            if status is None:
                return False
            last.clear()
            last.update(status)
            if seen is not None and (not seen or seen[-1] != status["state"]):
                seen.append(status["state"])
            return status["state"] in states

        try:
            wait_for(reached, timeout, f"upload {upload_id(upload)} to become {'/'.join(states)}", interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last status: {last}") from None
        return dict(last)

    def wait_installed(self, upload: str, timeout: float = 30) -> dict[str, Any]:
        """wait_state until installed or failed, asserting installed; the status."""
        status = self.wait_state(upload, "installed", "failed", timeout=timeout)
        assert status["state"] == "installed", f"the upload failed: {status['reason']}"
        return status


def wait_offset(client: TusClient, upload: str, offset: int, timeout: float = 10) -> None:
    wait_for(lambda: client.offset(upload) == offset, timeout, f"offset {offset} of {upload_id(upload)}")


def settle(seconds: float = 0.2) -> None:
    """Lets the server finish what a dropped request started, for checks that something did NOT happen."""
    time.sleep(seconds)


# -- by hand on a socket: requests no client library sends ----------------------------------------------


class RawRequest:
    """A request written by hand on a socket: its head announcing `length` body bytes (Content-Length), then
    whatever the test sends, at its pace; then the answer, if any.

        raw = RawRequest(url, "PATCH", {"Upload-Offset": "0", ...}, length=len(data))
        raw.send(data[:1000])             # and then nothing: a stalled sender, or
        raw.close(reset=True)             # a link that drops (RST)
        raw.response_status(timeout=5)    # what the server answered, None if it closed without a word
    """

    def __init__(self, url: str, method: str, headers: Mapping[str, str], length: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)
        self.sent = 0
        lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {length}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def send_slowly(self, data: bytes, rate: float, piece: int = 64 * 1024) -> None:
        """About `rate` bytes a second; stops quietly when the server closes the connection."""
        started = time.monotonic()
        for start in range(0, len(data), piece):
            try:
                self.send(data[start:start + piece])
            except OSError:
                return
            time.sleep(max(0.0, started + self.sent / rate - time.monotonic()))

    def response(self, timeout: float) -> tuple[int, dict[str, str]] | None:
        """The status and (lower-cased) headers the server answered with; None if it closed without."""
        self.sock.settimeout(timeout)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return None
                received += chunk
        except ConnectionResetError:
            return None
        status_line, *lines = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in lines)
        return int(status_line.split(" ", 2)[1]), {k.strip().lower(): v.strip() for k, v in headers.items()}

    def response_status(self, timeout: float) -> int | None:
        answer = self.response(timeout)
        return answer[0] if answer else None

    def read_all(self, timeout: float) -> bytes:
        """Everything the server sends until it closes the connection."""
        self.sock.settimeout(timeout)
        received = b""
        while chunk := self.sock.recv(65536):
            received += chunk
        return received

    def close(self, reset: bool = False) -> None:
        """Closes; with reset=True the kernel sends RST instead of FIN, like a dropped link."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class RawPatch(RawRequest):
    """A tus PATCH by hand: headers promising `length` body bytes at `offset`, then whatever we send."""

    def __init__(self, url: str, offset: int, length: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(url, "PATCH", {"Tus-Resumable": TUS_VERSION, "Content-Type": PATCH_TYPE, **(headers or {}),
                                        "Upload-Offset": str(offset)}, length)


def raw_request(port: int, method: str, path: str, headers: Mapping[str, str], body: bytes = b"",
                timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, header names and values put on the wire as given (latin-1), which
    httpx would refuse or normalize: (status, lower-cased headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value.encode("latin-1", "replace"))
        if body and not any(name.lower() == "content-length" for name in headers):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()
