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
from tests.support.tus import TusClient

PREFIX = "clash"


def create_reply(client: TusClient, filename: str, length: int = 1024) -> tuple[int, str]:
    reply = client.create(length, metadata={"filename": filename})
    return reply.status_code, reply.text


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
    first = client.upload_file(shards[0])
    second = client.location(shards[1].stat().st_size, metadata={"filename": shards[1].name})  # admitted: no clash yet
    placed = write_model(server.models_dir / f"{PREFIX}.gguf", name="Placed By Hand")
    before = placed.read_bytes()
    assert client.send_file(second, shards[1]).status_code == 204
    for upload in (first, second):
        status = client.wait_state(upload, "installed", "failed")
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
    upload = client.location(source.stat().st_size, metadata={"filename": source.name})
    (server.models_dir / PREFIX).mkdir()
    assert client.send_file(upload, source).status_code == 204
    status = client.wait_state(upload, "installed", "failed")
    assert status["state"] == "failed", status
    assert f"{PREFIX}/" in status["reason"], status["reason"]
    assert os.listdir(server.models_dir) == [PREFIX]
    assert os.listdir(server.models_dir / PREFIX) == []
