"""DELETE (T1, T2) and expiry (E2): terminated and expired uploads answer 410 and leave nothing behind."""

from __future__ import annotations

import time

import pytest

from modeldrop.server.store.filestore import FileStore
from tests.support.processes import ServerProcess
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, assert_error, gguf_bytes, module_server, stored_files, upload_id

server = module_server(fsync=False)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


def test_delete_is_204_and_frees_the_staged_files(client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    assert client.patch(location, MODEL[:3000], 0).status_code == 204
    response = client.delete(location)
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert [name for name in stored_files(server) if name.startswith(upload_id(location))] == \
        [f"{upload_id(location)}.gone"]


def test_delete_then_every_request_is_410(client: TusClient) -> None:
    location = client.location(len(MODEL))
    assert client.delete(location).status_code == 204
    head = client.head(location)
    assert_error(head, 410)
    assert "Upload-Offset" not in head.headers
    assert_error(client.patch(location, MODEL[:100], 0), 410, "gone")
    assert_error(client.delete(location), 410, "gone")


def test_delete_unknown_upload_is_404(client: TusClient) -> None:
    assert_error(client.delete("/files/" + "e" * 32), 404, "not_found")


def test_delete_without_tus_resumable_is_412_and_keeps_the_upload(client: TusClient) -> None:
    location = client.location(len(MODEL))
    assert_error(client.delete(location, headers={"Tus-Resumable": None}), 412, "unsupported_version")
    assert client.head(location).status_code == 200


def test_delete_of_an_installed_upload_forgets_its_record_but_keeps_the_model(client: TusClient,
                                                                              server: ServerProcess) -> None:
    location = client.upload(MODEL)
    name = client.wait_state(location, "installed")["final_name"]
    assert client.delete(location).status_code == 204
    assert (server.models_dir / name).read_bytes() == MODEL
    assert_error(client.head(location), 410)


def test_expired_upload_answers_410(client: TusClient, server: ServerProcess) -> None:
    """The server sweeps every 30 s; the sweep itself is run here on the live store (it is plain files)."""
    location = client.location(len(MODEL))
    assert client.patch(location, MODEL[:100], 0).status_code == 204
    swept = FileStore(server.staging_dir, durable=False).sweep(60, now=time.time() + 61)
    assert upload_id(location) in swept
    assert_error(client.head(location), 410)
    assert_error(client.patch(location, MODEL[100:200], 100), 410, "gone")
