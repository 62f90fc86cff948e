"""--max-append-size (the proxy in front of the server cuts larger request bodies): RUFH clients read it in
Upload-Limit, tus PATCHes over it get 413 before a byte is stored, and /api/config gives it to the web UI and
`modeldrop upload`, which then send at most that much per request. With a token: every RUFH route needs it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.metrics import server_metric
from tests.support.models import MIB
from tests.support.processes import ServerProcess
from tests.support.rufh import PROBLEM, RufhClient, resource
from tests.support.tus import TusClient, assert_error, gguf_bytes, module_server, nothing_stored

TOKEN = "rufh-secret"
LIMIT = 1 * MIB
server = module_server(fsync=False, max_append_size="1MiB", token=[TOKEN])
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[RufhClient]:
    rufh = RufhClient(server.url, token=TOKEN)
    yield rufh
    rufh.http.close()


@pytest.fixture
def tus(server: ServerProcess) -> TusClient:
    return TusClient(server.url, token=TOKEN)


def test_config_gives_the_limit(tus: TusClient) -> None:
    assert tus.get_json("/api/config")["max_append_size"] == LIMIT


def test_options_announce_max_append_size(client: RufhClient) -> None:
    assert "max-append-size=1048576" in client.options().headers["Upload-Limit"]
    assert "max-append-size=1048576" in client.options("/files/").headers["Upload-Limit"]


def test_rufh_requests_over_the_limit_are_413_with_upload_limit(client: RufhClient, server: ServerProcess) -> None:
    big = os.urandom(LIMIT + 1)
    location = client.location(length=2 * LIMIT + 1)
    with nothing_stored(server):
        for response in (client.append(location, big, 0), client.create(b"GGUF" + big, complete=True)):
            assert response.status_code == 413, response.text
            assert response.headers["Content-Type"] == PROBLEM
            assert "max-append-size=1048576" in response.headers["Upload-Limit"]
    assert client.append(location, b"GGUF" + big[:LIMIT - 4], 0).status_code == 204  # exactly the limit


def test_a_413_to_an_append_carries_the_upload_resources_own_limits(client: RufhClient) -> None:
    """A request refused for a limit gets all the limits of its upload resource (the draft's SHOULD since -12):
    its remaining lifetime too, as a HEAD would give it."""
    location = client.location(length=2 * LIMIT + 1)
    response = client.append(location, os.urandom(LIMIT + 1), 0)
    assert response.status_code == 413, response.text
    refused = dict(member.split("=") for member in response.headers["Upload-Limit"].split(", "))
    head = dict(member.split("=") for member in client.head(location).headers["Upload-Limit"].split(", "))
    assert refused.keys() == head.keys() == {"max-size", "max-append-size", "max-age"}
    assert abs(int(refused["max-age"]) - int(head["max-age"])) <= 2


def test_tus_patches_over_the_limit_are_413_before_a_byte_is_stored(tus: TusClient, server: ServerProcess) -> None:
    data = b"GGUF" + os.urandom(LIMIT)
    location = tus.location(len(data) + 10)
    with nothing_stored(server):
        response = tus.patch(location, data, 0)
        assert_error(response, 413, "too_large")
        assert "max-append-size" in response.json()["message"]
        assert_error(tus.create(len(data), body=data), 413, "too_large")  # creation-with-upload too
    assert tus.patch(location, data[:LIMIT], 0).status_code == 204


def test_every_rufh_route_needs_the_token(server: ServerProcess, client: RufhClient) -> None:
    location = client.location(length=len(MODEL))
    anonymous = RufhClient(server.url)
    with nothing_stored(server):
        for response in (anonymous.create(MODEL, complete=True), anonymous.create(MODEL, target="/files/"),
                         anonymous.append(location, MODEL, 0, complete=True), anonymous.delete(location)):
            assert response.status_code == 401, response.text
            assert response.json()["error"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.request("HEAD", resource(location)).status_code == 401
    assert client.offset(location) == 0


def test_modeldrop_upload_sends_at_most_the_servers_limit(server: ServerProcess, tmp_path: Path,
                                                          model: Path) -> None:
    env = {**os.environ, "MODELDROP_STATE_FILE": str(tmp_path / "state.json")}
    before = server_metric(server.url, "modeldrop_requests_total", 'method="PATCH",status="204"')
    result = run_cli(env, "upload", str(model), "--server", server.url, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    assert "the server's limit" in result.stderr
    patches = server_metric(server.url, "modeldrop_requests_total", 'method="PATCH",status="204"') - before
    assert patches == -(-model.stat().st_size // LIMIT)  # 24 MiB and a bit, in 1 MiB requests
    assert (server.models_dir / model.name).read_bytes() == model.read_bytes()


def test_an_explicit_chunk_size_wins(server: ServerProcess, tmp_path: Path) -> None:
    env = {**os.environ, "MODELDROP_STATE_FILE": str(tmp_path / "state.json")}
    path = tmp_path / "explicit.gguf"
    path.write_bytes(gguf_bytes(tensors=2, tensor_elems=300 * 1024))  # ~2.4 MiB
    result = run_cli(env, "upload", str(path), "--server", server.url, "--token", TOKEN, "--chunk-size", "2MiB")
    assert result.returncode != 0  # 2 MiB requests are over the server's limit: refused, not cut down
    assert "at most 1048576 bytes per request" in result.stdout
