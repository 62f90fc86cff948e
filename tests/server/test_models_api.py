"""The models API of a real `modeldrop serve`: list, describe, verify and delete what is in models/."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import truncate_by, write_model, write_split_set
from tests.support.processes import ServerProcess
from tests.support.models import sha256_of
from tests.support.tus import TusClient, raw_request

TOKEN = "test-token"


@pytest.fixture
def authed(start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, TusClient]:
    server = start_server(token=[TOKEN])
    return server, TusClient(server.url, token=TOKEN)


def listed(client: TusClient) -> dict[str, dict[str, object]]:
    return {entry["name"]: entry for entry in client.get_json("/api/models")["models"]}


def test_models_api_lists_hand_placed_files_with_facts(server: ServerProcess) -> None:
    client = TusClient(server.url)
    path = write_model(server.models_dir / "hand.gguf", context_length=4096)
    directory = server.models_dir / "set"
    directory.mkdir()
    shards = write_split_set(directory, "set", 3)
    models = listed(client)
    assert sorted(models) == ["hand.gguf", "set"]
    assert models["hand.gguf"]["gguf"]["context_length"] == 4096
    assert models["set"]["kind"] == "split"
    assert [s["name"] for s in models["set"]["shards"]] == [p.name for p in shards]
    write_model(path, context_length=8192)  # replaced by hand: the facts follow the file
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert client.get_json("/api/models/hand.gguf")["gguf"]["context_length"] == 8192


def test_models_api_verify_reports_truncation_and_sha256(server: ServerProcess, tmp_path: Path) -> None:
    client = TusClient(server.url)
    source = write_model(tmp_path / "up.gguf")
    upload = client.upload_file(source)
    assert client.wait_state(upload, "installed", "failed")["state"] == "installed"
    assert listed(client)["up.gguf"]["sha256"] == sha256_of(source)
    result = client.get_json("/api/verify/up.gguf?sha256=1")
    assert (result["ok"], result["sha256"], result["reason"]) == (True, sha256_of(source), None)
    installed = server.models_dir / "up.gguf"
    with open(installed, "r+b") as file:  # same size, one byte of tensor data changed
        file.seek(-1, os.SEEK_END)
        file.write(b"\x7f")
    assert client.get_json("/api/verify/up.gguf")["ok"] is True
    result = client.get_json("/api/verify/up.gguf?sha256=1")
    assert result["ok"] is False and "recorded at install" in result["reason"], result
    truncate_by(installed, 16)
    result = client.get_json("/api/verify/up.gguf")
    assert result["ok"] is False and result["reason"].startswith("truncated"), result


def test_models_api_delete_needs_token(authed: tuple[ServerProcess, TusClient]) -> None:
    server, client = authed
    write_model(server.models_dir / "doomed.gguf")
    anonymous = client.request("DELETE", "/api/models/doomed.gguf", headers={"Authorization": None})
    assert anonymous.status_code == 401
    assert client.request("GET", "/api/models", headers={"Authorization": None}).status_code == 401
    assert (server.models_dir / "doomed.gguf").exists()
    reply = client.request("DELETE", "/api/models/doomed.gguf")
    assert (reply.status_code, reply.json()) == (200, {"deleted": "doomed.gguf"})
    assert os.listdir(server.models_dir) == []
    assert listed(client) == {}
    assert client.request("DELETE", "/api/models/doomed.gguf").status_code == 404


def test_models_api_names_outside_models_dir_not_found(server: ServerProcess) -> None:
    directory = server.models_dir / "set"
    directory.mkdir()
    write_split_set(directory, "set", 2)
    write_model(server.staging_dir / "outside.gguf")
    staging = sorted(os.listdir(server.staging_dir))
    for name in ("..", "../staging", "%2e%2e", "..%2Fstaging", "../staging/outside.gguf", "..%2Fstaging%2Foutside.gguf",
                 "set/set-00001-of-00002.gguf", "set%2Fset-00001-of-00002.gguf", "missing.gguf"):
        for method, prefix in (("GET", "/api/models/"), ("GET", "/api/verify/"), ("DELETE", "/api/models/")):
            status, _, body = raw_request(server.port, method, prefix + name, {"Tus-Resumable": "1.0.0"})
            assert status == 404, (method, prefix + name, status, body)
    assert os.listdir(server.models_dir) == ["set"]
    assert len(os.listdir(directory)) == 2
    assert sorted(os.listdir(server.staging_dir)) == staging


ODD_NAMES = ["%00", "a%00.gguf", "%00/..", "x" * 300 + ".gguf", "y" * 5000, "%ff%fe.gguf", "%C0%AE%C0%AE", "a%0a.gguf",
             "%ed%a0%80.gguf", "a%2f%00", "%25", "nul\\x00", "..%00", "CON", "a" * 255 + "/" + "b" * 255]


def test_models_api_odd_names_get_a_4xx_with_a_message(server: ServerProcess) -> None:
    write_model(server.models_dir / "kept.gguf")
    for name in ODD_NAMES:
        for method, prefix in (("GET", "/api/models/"), ("GET", "/api/verify/"), ("DELETE", "/api/models/"),
                               ("GET", "/api/uploads/"), ("HEAD", "/files/"), ("DELETE", "/files/")):
            status, _, body = raw_request(server.port, method, prefix + name, {"Tus-Resumable": "1.0.0"})
            assert 400 <= status < 500, (method, prefix + name, status, body)
            if method != "HEAD":
                assert json.loads(body)["message"], (method, prefix + name)
    assert os.listdir(server.models_dir) == ["kept.gguf"]
    assert "Traceback" not in server.log()


def test_models_api_refuses_a_planted_link_and_shows_no_paths(server: ServerProcess, tmp_path: Path) -> None:
    client = TusClient(server.url)
    secret = write_model(tmp_path / "secret.gguf")
    (server.models_dir / "link.gguf").symlink_to(secret)
    write_model(server.models_dir / "real.gguf")
    listing = client.request("GET", "/api/models")
    assert [entry["name"] for entry in listing.json()["models"]] == ["real.gguf"]
    for method, path in (("GET", "/api/verify/link.gguf?sha256=1"), ("GET", "/api/models/link.gguf"),
                         ("DELETE", "/api/models/link.gguf")):
        reply = client.request(method, path)
        assert 400 <= reply.status_code < 500, (method, path, reply.status_code, reply.text)
        assert sha256_of(secret) not in reply.text
    assert (server.models_dir / "link.gguf").is_symlink()
    for path in ("/api/models", "/api/models/real.gguf", "/api/verify/real.gguf?sha256=1"):
        assert str(server.data_dir) not in client.request("GET", path).text
