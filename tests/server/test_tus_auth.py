"""Bearer tokens: every tus and /api route needs one (401, nothing written); OPTIONS and /healthz stay open;
no token on a non-loopback address only with --allow-anonymous."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, ServerProcess, free_port
from tests.support.tus import (TusClient, assert_error, data_path, gguf_bytes, module_server, nothing_stored,
                               running_server)

server = module_server(fsync=False, token=["t1", "t2"])
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)
BAD_CREDENTIALS = [None, "Bearer wrong", "Bearer", "Basic dDE6dDE=", "t1", "Bearer t1x", "bearer T1"]


@pytest.fixture(scope="module")
def location(server: ServerProcess) -> str:
    return TusClient(server.url, token="t1").location(len(MODEL))


@pytest.mark.parametrize("token", ["t1", "t2"])
def test_auth_each_configured_token_is_accepted(server: ServerProcess, token: str) -> None:
    tus = TusClient(server.url, token=token)
    location = tus.location(len(MODEL))
    assert tus.patch(location, MODEL[:100], 0).status_code == 204
    assert tus.offset(location) == 100
    assert tus.http.get("/api/models", headers=tus.headers()).status_code == 200


@pytest.mark.parametrize("authorization", BAD_CREDENTIALS)
def test_auth_tus_routes_without_valid_token_are_401_and_write_nothing(
        server: ServerProcess, location: str, authorization: str | None) -> None:
    tus = TusClient(server.url)
    sent = {"Authorization": authorization}
    with nothing_stored(server):
        responses = [tus.create(len(MODEL), headers=sent), tus.create(len(MODEL), headers=sent, body=MODEL),
                     tus.patch(location, MODEL[:100], 0, headers=sent), tus.delete(location, headers=sent)]
        head = tus.head(location, headers=sent)
    for response in responses:
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(head, 401)
    assert data_path(server, location).read_bytes() == b""


@pytest.mark.parametrize("authorization", [None, "Bearer wrong"])
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/uploads/" + "a" * 32), ("GET", "/api/models"), ("GET", "/api/models/x.gguf"),
    ("DELETE", "/api/models/x.gguf"), ("GET", "/api/verify/x.gguf"),
])
def test_auth_api_routes_without_valid_token_are_401(server: ServerProcess, method: str, path: str,
                                                     authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    assert_error(TusClient(server.url).http.request(method, path, headers=headers), 401, "unauthorized")


def test_auth_options_healthz_and_config_stay_open(server: ServerProcess) -> None:
    tus = TusClient(server.url)
    assert tus.options().status_code in (200, 204)
    assert tus.http.get("/healthz").status_code == 200
    config = tus.http.get("/api/config")  # the web UI learns here that it must ask for a token
    assert config.status_code == 200
    assert config.json()["auth_required"] is True


def test_auth_server_without_token_on_public_address_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "modeldrop.cli.main", "serve", "--host", "0.0.0.0", "--port",
                             str(free_port()), "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "--allow-anonymous" in result.stderr and "0.0.0.0" in result.stderr


def test_auth_allow_anonymous_starts_on_public_address(tmp_path: Path) -> None:
    with running_server(tmp_path, fsync=False, host="0.0.0.0", allow_anonymous=True) as public:
        assert TusClient(public.url).create(len(MODEL)).status_code == 201
