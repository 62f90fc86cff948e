"""One llama-server model id, one entry: a split set's folder `X/` and a file `X.gguf` are both model `X`.

Refused at creation (409) when the other kind is already installed, and again at publish time, the
authoritative check, when the other kind appeared in between (installed by hand or by another upload).
A folder and a file cannot replace each other in one rename, so --allow-overwrite does not help: the
upload is refused (failed with a reason) and the installed entry stays as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import write_model, write_split_set
from tests.support.processes import ServerProcess
from tests.worker.uploads import TusClient

PREFIX = "clash"


def create_reply(client: TusClient, filename: str, length: int = 1024) -> tuple[int, str]:
    from tests.worker.uploads import encode_metadata

    reply = client.request("POST", "/files/", {"Upload-Length": str(length),
                                               "Upload-Metadata": encode_metadata({"filename": filename})})
    return reply.status, reply.body.decode()


@pytest.mark.parametrize("allow_overwrite", [False, True])
def test_split_set_refused_at_creation_when_the_file_is_installed(
        start_server: Callable[..., ServerProcess], allow_overwrite: bool) -> None:
    server = start_server(allow_overwrite=allow_overwrite)
    write_model(server.models_dir / f"{PREFIX}.gguf")
    status, body = create_reply(TusClient(server.url), f"{PREFIX}-00001-of-00002.gguf")
    assert status == 409, body
    assert f"{PREFIX}.gguf" in body


@pytest.mark.parametrize("allow_overwrite", [False, True])
def test_file_refused_at_creation_when_the_split_folder_is_installed(
        start_server: Callable[..., ServerProcess], allow_overwrite: bool) -> None:
    server = start_server(allow_overwrite=allow_overwrite)
    (server.models_dir / PREFIX).mkdir()
    status, body = create_reply(TusClient(server.url), f"{PREFIX}.gguf")
    assert status == 409, body
    assert f"{PREFIX}/" in body


def test_file_with_another_case_of_the_extension_is_the_same_model(server: ServerProcess) -> None:
    write_model(server.models_dir / f"{PREFIX}.GGUF")
    status, body = create_reply(TusClient(server.url), f"{PREFIX}.gguf")
    assert status == 409, body


@pytest.mark.parametrize("allow_overwrite", [False, True])
def test_split_set_refused_at_publish_when_the_file_appeared(start_server: Callable[..., ServerProcess],
                                                              tmp_path: Path, allow_overwrite: bool) -> None:
    server = start_server(allow_overwrite=allow_overwrite)
    shards = write_split_set(tmp_path, PREFIX, 2)
    client = TusClient(server.url)
    first = client.upload(shards[0])
    second = client.create(shards[1].name, shards[1].stat().st_size)  # admitted: nothing named clash yet
    placed = write_model(server.models_dir / f"{PREFIX}.gguf", name="Placed By Hand")
    before = placed.read_bytes()
    assert client.send(second, shards[1]).status == 204
    for upload_id in (first, second):
        status = client.wait_for_state(upload_id, ["installed", "failed"])
        assert status["state"] == "failed", status
        assert f"{PREFIX}.gguf" in status["reason"], status["reason"]
    assert os.listdir(server.models_dir) == [f"{PREFIX}.gguf"]
    assert placed.read_bytes() == before


@pytest.mark.parametrize("allow_overwrite", [False, True])
def test_file_refused_at_publish_when_the_split_folder_appeared(start_server: Callable[..., ServerProcess],
                                                                 tmp_path: Path, allow_overwrite: bool) -> None:
    server = start_server(allow_overwrite=allow_overwrite)
    source = write_model(tmp_path / f"{PREFIX}.gguf")
    client = TusClient(server.url)
    upload_id = client.create(source.name, source.stat().st_size)
    (server.models_dir / PREFIX).mkdir()
    assert client.send(upload_id, source).status == 204
    status = client.wait_for_state(upload_id, ["installed", "failed"])
    assert status["state"] == "failed", status
    assert f"{PREFIX}/" in status["reason"], status["reason"]
    assert os.listdir(server.models_dir) == [PREFIX]
    assert os.listdir(server.models_dir / PREFIX) == []
