"""The same bytes under a new name are installed without a byte sent: a hard link to the installed model, verified
from what the server recorded when it installed that one, published like any install. And a name already installed
with these bytes is answered as installed (nothing to do), not refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from tusclient.client import TusClient as TuspyClient

from tests.dedupe.conftest import REFUSED_AT_MOST
from tests.support.clients import NodeUpload
from tests.support.models import MIB, assert_installed, make_models, sha256_of
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess
from tests.support.proxy import Proxy
from tests.support.tus import TusClient, assert_error, stored_files


def install(client: TusClient, server: ServerProcess, model: Path, name: str | None = None) -> str:
    location = client.upload_file(model, filename=name)
    assert_installed(server, location, model)
    return location


def test_a_new_name_for_installed_bytes_is_a_hard_link(server: ServerProcess, model: Path, digest: str) -> None:
    client = TusClient(server.url)
    install(client, server, model)
    size = model.stat().st_size

    response = client.create(size, metadata={"filename": "second-name.gguf", "sha256": digest})
    assert response.status_code == 201, response.text
    assert response.headers["Modeldrop-Match"] == "linked"
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(size)
    assert response.json()["message"].startswith("installed as second-name.gguf")
    location = response.headers["Location"]
    assert client.offset(location) == size

    status = client.status(location)
    assert status["state"] == "installed" and status["final_name"] == "second-name.gguf"
    assert status["sha256"] == digest and status["gguf"]["architecture"] == "llama"
    assert "hard link" in status["detail"]
    first, second = os.stat(server.models_dir / model.name), os.stat(server.models_dir / "second-name.gguf")
    assert (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino) and second.st_nlink == 2
    assert stat.S_IMODE(second.st_mode) == 0o644
    listed = {entry["name"]: entry for entry in client.get_json("/api/models")["models"]}
    assert listed["second-name.gguf"]["sha256"] == digest and listed[model.name]["sha256"] == digest
    assert not [name for name in stored_files(server) if name.endswith(".bin")]  # no data left in staging
    assert client.get_json("/api/verify/second-name.gguf?sha256=1")["ok"]


def test_the_same_name_and_bytes_are_already_installed(server: ServerProcess, model: Path, digest: str) -> None:
    client = TusClient(server.url)
    first = install(client, server, model)
    inode = os.stat(server.models_dir / model.name).st_ino
    size = model.stat().st_size

    response = client.create(size, metadata={"filename": model.name, "sha256": digest})
    assert response.status_code == 201, response.text
    assert response.headers["Modeldrop-Match"] == "installed"
    assert response.headers["Location"] == first  # the upload that installed it
    assert response.headers["Upload-Offset"] == str(size)
    assert "already installed" in response.json()["message"]
    assert client.status(first)["state"] == "installed"
    assert os.listdir(server.models_dir) == [model.name] and os.stat(server.models_dir / model.name).st_ino == inode

    # other bytes, or bytes the client does not vouch for, under that name are still refused
    assert_error(client.create(size, metadata={"filename": model.name, "sha256": "cd" * 32}), 409, "already_installed")
    assert_error(client.create(size, metadata={"filename": model.name}), 409, "already_installed")


def test_the_answer_outlives_the_record_of_the_upload_that_installed_it(server: ServerProcess, model: Path,
                                                                         digest: str) -> None:
    client = TusClient(server.url)
    first = install(client, server, model)
    assert client.delete(first).status_code == 204  # its record goes (as it would expire); the model stays
    response = client.create(model.stat().st_size, metadata={"filename": model.name, "sha256": digest})
    assert response.status_code == 201 and response.headers["Modeldrop-Match"] == "installed"
    status = client.status(response.headers["Location"])
    assert status["state"] == "installed" and status["final_name"] == model.name and status["sha256"] == digest


def test_a_model_changed_on_disk_is_not_linked(server: ServerProcess, model: Path, digest: str) -> None:
    """The digest on record is only trusted while the file's size and modification time are the recorded ones."""
    client = TusClient(server.url)
    install(client, server, model)
    os.utime(server.models_dir / model.name, ns=(1, 1))
    response = client.create(model.stat().st_size, metadata={"filename": "other.gguf", "sha256": digest})
    assert response.status_code == 201 and "Modeldrop-Match" not in response.headers
    assert not (server.models_dir / "other.gguf").exists()


def test_a_name_taken_by_other_bytes_is_not_replaced(server: ServerProcess, model: Path, digest: str,
                                                     tmp_path: Path) -> None:
    client = TusClient(server.url)
    install(client, server, model)
    [other] = make_models(tmp_path, 1, 2, "other")
    install(client, server, other)
    before = os.stat(server.models_dir / other.name).st_ino
    response = client.create(model.stat().st_size, metadata={"filename": other.name, "sha256": digest})
    assert_error(response, 409, "already_installed")
    assert os.stat(server.models_dir / other.name).st_ino == before


def test_linked_by_the_server_with_an_rq_worker(redis_server: RedisProcess,
                                                start_server: Callable[..., ServerProcess],
                                                start_worker: Callable[..., WorkerProcess], model: Path,
                                                digest: str) -> None:
    server = start_server(redis_url=redis_server.url)
    start_worker(redis_server.url)
    client = TusClient(server.url)
    install(client, server, model)  # verified and installed by the RQ worker
    response = client.create(model.stat().st_size, metadata={"filename": "via-worker.gguf", "sha256": digest})
    assert response.headers["Modeldrop-Match"] == "linked"
    assert client.status(response.headers["Location"])["state"] == "installed"
    assert os.stat(server.models_dir / "via-worker.gguf").st_ino == os.stat(server.models_dir / model.name).st_ino


@pytest.mark.parametrize("chunk_size", [None, 4 * MIB])
def test_tus_js_client_finishes_without_sending_the_file(server: ServerProcess, model: Path, digest: str,
                                                         proxy: Callable[..., Proxy], chunk_size: int | None) -> None:
    """tus-js-client PATCHes at 0 after the creation; the refusal makes it HEAD, which says the upload is complete."""
    install(TusClient(server.url), server, model)
    relay = proxy(server)
    name = f"from-node-{chunk_size}.gguf"
    upload = NodeUpload(model, f"{relay.url}/files/", metadata={"filename": name, "sha256": digest},
                        retry_delays=[0, 500], chunk_size=chunk_size)
    url = upload.finish(60)
    size = str(model.stat().st_size)
    # its PATCH at 0 is refused before a byte is read and the connection closed: it sees the 409, or a broken pipe
    seen = [(e["method"], e["status"], e["offset"]) for e in upload.of("response") if e["method"] != "PATCH"]
    assert seen == [("POST", 201, size), ("HEAD", 200, size)], upload.transcript()
    assert len(upload.of("retry")) == 1 and not [e for e in upload.of("response") if e["status"] == 204]
    assert relay.forwarded < REFUSED_AT_MOST, f"{relay.forwarded} bytes sent"
    status = TusClient(server.url).status(url)
    assert status["state"] == "installed" and status["final_name"] == name
    assert os.stat(server.models_dir / name).st_ino == os.stat(server.models_dir / model.name).st_ino


def test_tuspy_finishes_without_sending_the_file(server: ServerProcess, model: Path, digest: str) -> None:
    install(TusClient(server.url), server, model)
    metadata = {"filename": "from-tuspy.gguf", "sha256": digest}
    uploader = TuspyClient(f"{server.url}/files/").uploader(file_path=str(model), chunk_size=4 * MIB,
                                                           metadata=metadata)
    uploader.set_url(uploader.create_url())
    uploader.offset = uploader.get_offset()
    assert uploader.offset == model.stat().st_size
    uploader.upload()  # nothing left to send
    assert TusClient(server.url).status(str(uploader.url))["state"] == "installed"
    assert sha256_of(server.models_dir / "from-tuspy.gguf") == digest
