"""HEAD: C7–C9, K5, and finished uploads that stay answerable after they are installed (survey §5.7)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import write_split_set
from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, assert_error, gguf_bytes, module_server, unique_name

server = module_server(fsync=False)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


def test_head_new_upload_has_offset_zero_length_and_no_store(client: TusClient) -> None:
    location = client.location(len(MODEL))
    response = client.head(location)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == str(len(MODEL))
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.content == b""


def test_head_echoes_metadata_as_sent(client: TusClient) -> None:
    name = unique_name()
    location = client.location(len(MODEL), metadata={"filename": name, "sha256": "ab" * 32, "note": ""})
    assert client.head(location).headers["Upload-Metadata"] == client.create(
        1, metadata={"filename": name, "sha256": "ab" * 32, "note": ""}).request.headers["Upload-Metadata"]


def test_head_without_tus_resumable_is_412(client: TusClient) -> None:
    location = client.location(len(MODEL))
    response = client.head(location, headers={"Tus-Resumable": None})
    assert_error(response, 412)
    assert response.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize("path", ["/files/" + "f" * 32, "/files/xyz", "/files/" + "F" * 32])
def test_head_unknown_upload_is_404_without_offset(client: TusClient, path: str) -> None:
    response = client.head(path)
    assert_error(response, 404)
    assert "Upload-Offset" not in response.headers


def test_head_after_install_reports_complete_not_404(client: TusClient, server: ServerProcess) -> None:
    name = unique_name()
    location = client.upload(MODEL, chunk=4000, metadata={"filename": name})
    upload = location.rsplit("/", 1)[1]
    status = client.wait_state(location, "installed")
    assert status["final_name"] == name
    assert (server.models_dir / name).read_bytes() == MODEL
    assert not (server.staging_dir / "uploads" / f"{upload}.bin").exists()
    response = client.head(location)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(MODEL))
    assert response.headers["Modeldrop-Status"] == f"/api/uploads/{upload}"
    assert "Upload-Expires" not in response.headers
    again = client.patch(location, b"", len(MODEL))
    assert again.status_code == 204
    assert again.headers["Upload-Offset"] == str(len(MODEL))


def test_head_status_header_points_at_the_status_resource(client: TusClient) -> None:
    location = client.location(len(MODEL))
    path = client.head(location).headers["Modeldrop-Status"]
    body = client.http.get(path).json()
    assert body["state"] == "receiving"
    assert body["offset"] == 0
    assert body["length"] == len(MODEL)


def test_head_on_a_shard_waiting_for_its_set_reports_complete(client: TusClient, server: ServerProcess,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """A verified shard is staged out of the uploads folder until its set is complete; it is still done."""
    prefix = f"split-{unique_name()[:-5]}"
    first, _ = write_split_set(tmp_path_factory.mktemp("set"), prefix, 2)
    data = first.read_bytes()
    location = client.upload(data, metadata={"filename": first.name})
    wait_for(lambda: client.status(location).get("set"), 20, "the shard to be staged")
    response = client.head(location)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == str(len(data))
    assert client.patch(location, b"", len(data)).status_code == 204


def test_head_from_memory_follows_changes_made_by_another_server(start_server: Callable[..., ServerProcess],
                                                                   tmp_path: Path) -> None:
    """HEAD keeps the record it read (server/store/cache.py): a PATCH or DELETE through another process on
    the same staging directory must show in the very next HEAD here, never the kept offset."""
    here = start_server(data_dir=tmp_path / "shared", fsync=False)
    there = start_server(data_dir=tmp_path / "shared", fsync=False)
    a, b = TusClient(here.url), TusClient(there.url)
    path = urllib.parse.urlsplit(a.location(len(MODEL))).path
    step = len(MODEL) // 4
    for offset in range(0, 3 * step, step):
        assert a.offset(path) == offset
        assert a.offset(path) == offset  # the second answer comes from memory
        assert b.patch(path, MODEL[offset:offset + step], offset).status_code == 204
    assert a.offset(path) == 3 * step
    assert b.delete(path).status_code == 204
    assert_error(a.head(path), 410)
