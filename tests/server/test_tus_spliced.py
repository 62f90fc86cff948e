"""Large PATCH bodies taken off the socket (server/socket_body.py) and spliced into the file (server/tus/spliced.py).

Each test reads `modeldrop_bytes_spliced_total` to know which path a body took: a test of the spliced path
that silently ran through ASGI would prove nothing.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import time

import pytest

from modeldrop.server.store.digest import ResumableSha256
from modeldrop.server.store.filestore import FileStore
from tests.support.metrics import server_metric
from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import (PATCH_TYPE, RawRequest, TusClient, assert_error, data_path, gguf_bytes, module_server,
                               upload_id, wait_offset)

MIB = 1024 * 1024
IDLE_TIMEOUT = 1.5
server = module_server(idle_timeout=IDLE_TIMEOUT)  # fsync on: every spliced offset is synced before it is told
MODEL = gguf_bytes(tensors=4, tensor_elems=512 * 1024)  # ~8 MiB


def spliced_bytes(server: ServerProcess) -> float:
    return server_metric(server.url, "modeldrop_bytes_spliced_total")


def checkpoint_digest(server: ServerProcess, location: str, offset: int) -> str:
    """The running sha256 the server checkpointed with the durable offset (written in the background)."""
    store = FileStore(server.staging_dir)
    checkpoint = wait_for(lambda: (lambda c: c if c is not None and c[0] == offset else None)(
        store.load_checkpoint(upload_id(location))), 10, f"a checkpoint at {offset}")
    return ResumableSha256(checkpoint[1]).hexdigest()


def tus_headers(offset: int) -> dict[str, str]:
    return {"Tus-Resumable": "1.0.0", "Content-Type": PATCH_TYPE, "Upload-Offset": str(offset)}


def truncated_patch(location: str, body: bytes, length: int) -> RawRequest:
    """A PATCH at offset 0 announcing `length` body bytes, of which only `body` is sent (for now)."""
    raw = RawRequest(location, "PATCH", tus_headers(0), length)
    raw.send(body)
    return raw


def test_a_large_body_is_spliced_hashed_from_the_page_cache_and_the_connection_kept(
        client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    path = "/files/" + upload_id(location)
    before = spliced_bytes(server)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("PATCH", path, body=MODEL[:3 * MIB + 5], headers=tus_headers(0))
        first = connection.getresponse()
        first.read()
        sock = connection.sock
        connection.request("PATCH", path, body=MODEL[3 * MIB + 5:5 * MIB], headers=tus_headers(3 * MIB + 5))
        second = connection.getresponse()
        second.read()
        connection.request("HEAD", path, headers={"Tus-Resumable": "1.0.0"})
        head = connection.getresponse()
        head.read()
        assert connection.sock is sock and not head.will_close, "the connection was not kept across requests"
    finally:
        connection.close()

    assert (first.status, first.getheader("Upload-Offset")) == (204, str(3 * MIB + 5))
    assert (second.status, second.getheader("Upload-Offset")) == (204, str(5 * MIB))
    assert head.getheader("Upload-Offset") == str(5 * MIB)
    assert spliced_bytes(server) - before == 5 * MIB
    assert data_path(server, location).read_bytes() == MODEL[:5 * MIB]
    assert checkpoint_digest(server, location, 5 * MIB) == hashlib.sha256(MODEL[:5 * MIB]).hexdigest()


def test_a_spliced_upload_installs_with_the_digest_kept_while_receiving(client: TusClient,
                                                                        server: ServerProcess) -> None:
    before = spliced_bytes(server)
    location = client.upload(MODEL)
    status = client.wait_state(location, "installed", "failed")
    assert status["state"] == "installed", status.get("reason")
    assert status["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert spliced_bytes(server) - before == len(MODEL)
    assert (server.models_dir / status["final_name"]).read_bytes() == MODEL


@pytest.mark.parametrize("kind", ["small", "checksum"])
def test_small_bodies_and_checksum_requests_are_read_through_asgi(client: TusClient, server: ServerProcess,
                                                                 kind: str) -> None:
    body = MODEL[:100_000] if kind == "small" else MODEL[:2 * MIB]
    headers = {}
    if kind == "checksum":  # the request's own digest is computed from its bytes in Python
        headers["Upload-Checksum"] = "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()
    location = client.location(len(MODEL))
    before = spliced_bytes(server)
    response = client.patch(location, body, 0, headers=headers)
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(body))
    assert spliced_bytes(server) == before


def test_a_large_body_that_is_not_gguf_is_refused_and_nothing_stored(client: TusClient,
                                                                     server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    client.patch(location, b"GG", 0)
    before = spliced_bytes(server)
    response = client.patch(location, b"XX" + MODEL[4:3 * MIB], 2)
    assert_error(response, 400, "not_gguf")
    assert client.offset(location) == 2  # none of the request's bytes; the failed upload's own are freed
    assert not data_path(server, location).exists()
    assert client.status(location)["state"] == "failed"
    assert spliced_bytes(server) == before


def test_the_magic_arriving_in_pieces_is_checked_and_kept(client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    before = spliced_bytes(server)

    raw = truncated_patch(location, MODEL[:2], 2 * MIB)
    try:
        time.sleep(0.3)  # the server has taken the socket with only two bytes of the magic
        raw.send(MODEL[2:2 * MIB])
        assert raw.response_status(timeout=30) == 204
    finally:
        raw.close()
    assert data_path(server, location).read_bytes() == MODEL[:2 * MIB]
    assert spliced_bytes(server) - before == 2 * MIB


def test_a_cut_connection_keeps_every_byte_that_arrived(client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    raw = truncated_patch(location, MODEL[:3 * MIB], 4 * MIB)
    time.sleep(0.3)
    raw.close()
    wait_offset(client, location, 3 * MIB)
    assert data_path(server, location).read_bytes() == MODEL[:3 * MIB]
    assert checkpoint_digest(server, location, 3 * MIB) == hashlib.sha256(MODEL[:3 * MIB]).hexdigest()


def test_a_stalled_body_is_cut_after_the_idle_timeout_with_its_bytes_kept_and_the_connection_closed(
        client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    started = time.monotonic()
    raw = truncated_patch(location, MODEL[:2 * MIB], 4 * MIB)
    try:
        answer = raw.read_all(timeout=IDLE_TIMEOUT + 10)  # the server closes: the rest of the body never came
    finally:
        raw.close()
    assert IDLE_TIMEOUT <= time.monotonic() - started < IDLE_TIMEOUT + 5
    assert answer.startswith(b"HTTP/1.1 500 ") and b"read_timeout" in answer
    assert client.offset(location) == 2 * MIB
    assert data_path(server, location).read_bytes() == MODEL[:2 * MIB]


def test_a_new_request_takes_over_a_stalled_spliced_body(client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    raw = truncated_patch(location, MODEL[:2 * MIB], 4 * MIB)
    try:
        time.sleep(0.3)
        started = time.monotonic()
        assert client.offset(location) == 2 * MIB  # HEAD asks the holder to let go, and gets the saved offset
        assert time.monotonic() - started < IDLE_TIMEOUT
        response = client.patch(location, MODEL[2 * MIB:], 2 * MIB)
        assert response.status_code == 204, response.text
    finally:
        raw.close()
    assert client.wait_state(location, "installed", "failed")["state"] == "installed"
