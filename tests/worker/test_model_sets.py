"""Multimodal model sets: a model and its projector (an mmproj*.gguf), or a split model's shards and its projector,
are verified one by one, wait in staging, and appear in models/<set>/ together, in one step; a projector sent
alone joins the installed model of its set's name. Against real servers (embedded, and with an RQ worker)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ggufgen import write_model, write_projector, write_split_set
from tests.support.models import ModelsWatcher, sha256_of
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess, wait_for
from tests.support.tus import TusClient, assert_error, upload_id

SET = "vision"
FAST_REQUEUE = {"MODELDROP_STALE_AFTER": "1", "MODELDROP_MAINTENANCE_INTERVAL": "2"}


def set_metadata(path: Path, name: str, size: int, **extra: str) -> dict[str, str]:
    """The tus metadata a plain tus client sends for a file of a model set."""
    return {"filename": path.name, "set": name, "set_size": str(size), **extra}


def send(client: TusClient, path: Path, name: str, size: int) -> str:
    location = client.location(path.stat().st_size, metadata=set_metadata(path, name, size))
    response = client.send_file(location, path)
    assert response.status_code == 204, response.text
    return location


def wait_waiting(client: TusClient, upload: str, waiting: int) -> dict[str, Any]:
    """The file's status once it is staged and its set still needs `waiting` files."""

    def staged() -> dict[str, Any] | None:
        status = client.status(upload)
        assert status["state"] != "failed", status
        return status if (status.get("set") or {}).get("waiting") == waiting else None

    return dict(wait_for(staged, 20, f"{upload} to wait for {waiting} more file(s) of its set"))


def wait_sets_cleaned(server: ServerProcess) -> None:
    wait_for(lambda: os.listdir(server.staging_dir / "sets") == [], 5, "the staged set to be cleaned up")


class TopLevelScans:
    """Lists the models directory as fast as it can, as llama-server's scan would, keeping every distinct listing."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.listings: list[set[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            listing = set(os.listdir(self.models_dir))
            if not self.listings or self.listings[-1] != listing:
                self.listings.append(listing)
            time.sleep(0.0005)

    def __enter__(self) -> TopLevelScans:
        self._thread.start()
        wait_for(lambda: self.listings, 5, "the first scan")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A model and its projector, as a Hugging Face repository holds them."""
    return (write_model(tmp_path / "Vision-Q4_K_M.gguf", tensors=3),
            write_projector(tmp_path / "mmproj-Vision-f16.gguf"))


@pytest.fixture(params=["embedded", "rq"])
def finalizing_server(request: pytest.FixtureRequest, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server that finalizes in its own thread, or one whose finalizing runs in an RQ worker process."""
    if request.param == "embedded":
        return start_server()
    redis_server: RedisProcess = request.getfixturevalue("redis_server")
    start_worker: Callable[..., WorkerProcess] = request.getfixturevalue("start_worker")
    server = start_server(redis_url=redis_server.url)
    start_worker(redis_server.url)
    return server


def test_model_and_projector_are_published_together(finalizing_server: ServerProcess,
                                                     pair: tuple[Path, Path]) -> None:
    server = finalizing_server
    model, projector = pair
    client = TusClient(server.url)
    with ModelsWatcher(server.models_dir) as watcher:
        first = send(client, model, SET, 2)
        waiting = wait_waiting(client, first, 1)
        assert waiting["state"] == "verifying" and waiting["reason"] is None
        assert waiting["set"]["prefix"] == SET and waiting["set"]["files"] == [model.name]
        assert waiting["set"]["size"] == 2
        assert "its projector" in waiting["detail"], waiting["detail"]
        assert os.listdir(server.models_dir) == []
        second = send(client, projector, SET, 2)
        statuses = [client.wait_installed(upload) for upload in (first, second)]
    for path, status in zip((model, projector), statuses):
        assert status["final_name"] == f"{SET}/{path.name}"
        assert status["model"] == SET
        assert status["sha256"] == sha256_of(path)
    assert statuses[1]["gguf"]["architecture"] == "clip" and statuses[1]["gguf"]["type"] == "mmproj"
    assert os.listdir(server.models_dir) == [SET]
    assert sorted(os.listdir(server.models_dir / SET)) == sorted([model.name, projector.name])
    folders = [s.children for s in watcher.sightings.values() if s.is_dir]
    assert folders == [tuple(sorted([model.name, projector.name]))]  # never one without the other
    watcher.check({f"{SET}/{path.name}": (path.stat().st_size, sha256_of(path)) for path in (model, projector)})
    wait_sets_cleaned(server)

    listed = client.get_json("/api/models")["models"]
    assert [entry["name"] for entry in listed] == [SET]
    entry = listed[0]
    assert entry["kind"] == "set" and entry["status"] == "ok", entry
    assert [(part["name"], part["role"]) for part in entry["parts"]] == [(model.name, "model"),
                                                                          (projector.name, "projector")]
    assert [part["sha256"] for part in entry["parts"]] == [sha256_of(model), sha256_of(projector)]
    assert entry["gguf"]["architecture"] == "llama"
    assert entry["projector"]["name"] == projector.name and entry["projector"]["gguf"]["architecture"] == "clip"
    assert entry["size"] == model.stat().st_size + projector.stat().st_size
    verified = client.get_json(f"/api/verify/{SET}?sha256=1")
    assert verified["ok"] is True, verified
    assert verified["shard_sha256"] == {model.name: sha256_of(model), projector.name: sha256_of(projector)}
    assert client.request("DELETE", f"/api/models/{SET}").status_code == 200
    assert os.listdir(server.models_dir) == []


def test_split_model_and_projector_are_one_set(server: ServerProcess, tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, "Big", 2)
    projector = write_projector(tmp_path / "mmproj-Big-f16.gguf")
    client = TusClient(server.url)
    with ModelsWatcher(server.models_dir) as watcher:
        first = send(client, shards[0], "Big", 3)
        status = wait_waiting(client, first, 2)
        assert status["set"]["missing"] == [2] and status["set"]["count"] == 2
        assert "shard(s) 00002 of 00002 and its projector" in status["detail"], status["detail"]
        second = send(client, projector, "Big", 3)
        wait_waiting(client, second, 1)
        assert os.listdir(server.models_dir) == []
        third = send(client, shards[1], "Big", 3)
        for upload in (first, second, third):
            client.wait_installed(upload)
    names = sorted(path.name for path in (*shards, projector))
    assert sorted(os.listdir(server.models_dir / "Big")) == names
    assert [s.children for s in watcher.sightings.values() if s.is_dir] == [tuple(names)]
    entry = client.get_json("/api/models/Big")
    assert entry["kind"] == "set"
    assert [part["role"] for part in entry["parts"]] == ["shard", "shard", "projector"]
    assert [shard["name"] for shard in entry["shards"]] == [shard.name for shard in shards]
    assert client.get_json("/api/verify/Big")["ok"] is True


def test_a_projector_sent_alone_joins_the_installed_model(finalizing_server: ServerProcess,
                                                          pair: tuple[Path, Path]) -> None:
    """x.gguf becomes x/ (x.gguf + mmproj): llama-server's scan sees x.gguf, then both (each whole), then x/ alone;
    never neither, and never a folder without both files."""
    server = finalizing_server
    model, projector = pair
    client = TusClient(server.url)
    client.wait_installed(client.upload_file(model))
    installed = server.models_dir / model.name
    inode = installed.stat().st_ino
    name = model.name[:-len(".gguf")]
    with ModelsWatcher(server.models_dir) as watcher, TopLevelScans(server.models_dir) as scans:
        joined = client.wait_installed(send(client, projector, name, 1))
    assert joined["final_name"] == f"{name}/{projector.name}" and joined["model"] == name
    assert os.listdir(server.models_dir) == [name]
    assert sorted(os.listdir(server.models_dir / name)) == sorted([model.name, projector.name])
    assert (server.models_dir / name / model.name).stat().st_ino == inode  # the same file, not a copy
    folders = [s.children for s in watcher.sightings.values() if s.is_dir]
    assert folders == [tuple(sorted([model.name, projector.name]))]
    # every scan saw the model: the file until the folder was in, then both, then the folder alone
    assert scans.listings and all(listing & {model.name, name} for listing in scans.listings)
    assert scans.listings[0] == {model.name} and scans.listings[-1] == {name}
    entry = client.get_json(f"/api/models/{name}")
    assert entry["kind"] == "set" and entry["status"] == "ok"
    model_part = next(part for part in entry["parts"] if part["role"] == "model")
    assert model_part["sha256"] == sha256_of(model)  # carried over from the file's own install record
    assert client.get_json(f"/api/verify/{name}?sha256=1")["ok"] is True
    wait_sets_cleaned(server)


def test_a_projector_sent_alone_joins_an_installed_split_model(server: ServerProcess, tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, "Split", 2)
    projector = write_projector(tmp_path / "mmproj-Split-f16.gguf")
    client = TusClient(server.url)
    for upload in [client.upload_file(shard) for shard in shards]:
        client.wait_installed(upload)
    folder_inode = (server.models_dir / "Split").stat().st_ino
    with ModelsWatcher(server.models_dir) as watcher:
        client.wait_installed(send(client, projector, "Split", 1))
    names = sorted(path.name for path in (*shards, projector))
    assert sorted(os.listdir(server.models_dir / "Split")) == names
    assert (server.models_dir / "Split").stat().st_ino != folder_inode  # swapped in whole
    # the folder was seen as it was (the shards alone) or as it is, never between
    assert {s.children for s in watcher.sightings.values() if s.is_dir} == {tuple(names),
                                                                            tuple(shard.name for shard in shards)}
    assert client.get_json("/api/verify/Split?sha256=1")["ok"] is True
    wait_sets_cleaned(server)


def test_a_second_projector_replaces_the_first_only_with_allow_overwrite(start_server: Callable[..., ServerProcess],
                                                                        pair: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    model, projector = pair
    newer = write_projector(tmp_path / "mmproj-Vision-q8.gguf", embd=64)
    server = start_server()
    client = TusClient(server.url)
    for upload in [send(client, path, SET, 2) for path in (model, projector)]:
        client.wait_installed(upload)
    refused = client.create(newer.stat().st_size, metadata=set_metadata(newer, SET, 1))
    assert_error(refused, 400, "invalid_set")
    assert "--allow-overwrite" in refused.json()["message"]
    server.stop()
    server = start_server(allow_overwrite=True)
    client = TusClient(server.url)
    client.wait_installed(send(client, newer, SET, 1))
    assert sorted(os.listdir(server.models_dir / SET)) == sorted([model.name, newer.name])
    assert sha256_of(server.models_dir / SET / newer.name) == sha256_of(newer)


def test_a_set_is_replaced_whole_only_with_allow_overwrite(start_server: Callable[..., ServerProcess],
                                                           pair: tuple[Path, Path]) -> None:
    model, projector = pair
    server = start_server()
    client = TusClient(server.url)
    for upload in [send(client, path, SET, 2) for path in (model, projector)]:
        client.wait_installed(upload)
    assert_error(client.create(model.stat().st_size, metadata=set_metadata(model, SET, 2)), 409, "already_installed")
    server.stop()
    server = start_server(allow_overwrite=True)
    client = TusClient(server.url)
    old_folder = (server.models_dir / SET).stat().st_ino
    with ModelsWatcher(server.models_dir) as watcher:
        for upload in [send(client, path, SET, 2) for path in (model, projector)]:
            client.wait_installed(upload)
    assert (server.models_dir / SET).stat().st_ino != old_folder
    assert {s.children for s in watcher.sightings.values() if s.is_dir} == {tuple(sorted([model.name, projector.name]))}


def test_creation_refuses_what_can_never_be_a_set(server: ServerProcess, pair: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    model, projector = pair
    client = TusClient(server.url)
    size = projector.stat().st_size
    refusals = {
        "a projector alone, without a set": {"filename": projector.name},
        "set without set_size": {"filename": model.name, "set": SET},
        "set_size without set": {"filename": model.name, "set_size": "2"},
        "set_size zero": set_metadata(model, SET, 0),
        "set_size not a number": {"filename": model.name, "set": SET, "set_size": "two"},
        "a set named like a file": set_metadata(model, "vision.gguf", 2),
        "a set name with a slash": set_metadata(model, "a/b", 2),
        "a single-file model in a set of 3": set_metadata(model, SET, 3),
        "a shard of 2 in a set of 4": {"filename": "Big-00001-of-00002.gguf", "set": SET, "set_size": "4"},
        "a projector alone for a model not installed": set_metadata(projector, "nothing-here", 1),
    }
    for what, metadata in refusals.items():
        response = client.create(size, metadata=metadata)
        assert response.status_code == 400, (what, response.status_code, response.text)
        assert response.json()["error"] in ("invalid_set", "invalid_filename"), (what, response.text)


def test_a_file_whose_header_contradicts_its_name_fails_the_set(server: ServerProcess, tmp_path: Path) -> None:
    """A model named mmproj-…: llama-server would take it as the projector. A projector named as a model:
    llama-server would load it as the model. Each is refused when verified, and the set is not installed."""
    client = TusClient(server.url)
    fake_projector = write_model(tmp_path / "mmproj-fake.gguf")
    status = client.wait_state(send(client, fake_projector, "fake", 2), "failed", "installed")
    assert status["state"] == "failed" and "named as a projector" in status["reason"], status
    hidden_projector = write_projector(tmp_path / "Hidden.gguf")
    status = client.wait_state(send(client, hidden_projector, "hidden", 2), "failed", "installed")
    assert status["state"] == "failed" and "multimodal projector" in status["reason"], status
    plain = write_projector(tmp_path / "Plain.gguf")
    status = client.wait_state(client.upload_file(plain), "failed", "installed")
    assert status["state"] == "failed" and "projector" in status["reason"], status
    assert os.listdir(server.models_dir) == []


def test_files_of_one_set_must_agree_on_its_size(server: ServerProcess, pair: tuple[Path, Path]) -> None:
    model, projector = pair
    client = TusClient(server.url)
    first = send(client, model, SET, 2)
    wait_waiting(client, first, 1)
    client.wait_installed(send(client, projector, SET, 2))  # the same size: installed with the model
    client.wait_installed(first)
    other = write_projector(projector.with_name("mmproj-Other.gguf"))
    model_two = write_model(model.with_name("Other.gguf"))
    waiting = send(client, model_two, "other", 2)
    wait_waiting(client, waiting, 1)
    mismatched = send(client, other, "other", 3)  # says the set is three files
    status = client.wait_state(mismatched, "failed", "installed")
    assert status["state"] == "failed" and "set_size" in status["reason"], status
    assert client.status(waiting)["state"] == "verifying"  # the model still waits for its projector


def test_a_plain_tus_client_sends_a_set(server: ServerProcess, pair: tuple[Path, Path]) -> None:
    """tuspy, knowing nothing of modeldrop: the set is only its metadata."""
    from tusclient import client as tus_client

    model, projector = pair
    uploader_client = tus_client.TusClient(f"{server.url}/files/")
    urls = []
    for path in (model, projector):
        uploader = uploader_client.uploader(str(path), chunk_size=64 * 1024,
                                            metadata=set_metadata(path, SET, 2))
        uploader.upload()
        urls.append(uploader.url)
    client = TusClient(server.url)
    for url in urls:
        client.wait_installed(url)
    assert sorted(os.listdir(server.models_dir / SET)) == sorted([model.name, projector.name])


def test_recovery_finishes_a_join_cut_short_after_the_folder_went_in(start_server: Callable[..., ServerProcess],
                                                                     pair: tuple[Path, Path]) -> None:
    """A crash between renaming x/ in and unlinking x.gguf leaves both (each whole), the members file and the
    projector's status short of installed; the restarted server's requeue finishes: x.gguf goes, x/ stays."""
    model, projector = pair
    server = start_server()
    client = TusClient(server.url)
    client.wait_installed(client.upload_file(model))
    name = model.name[:-len(".gguf")]
    joined = upload_id(send(client, projector, name, 1))
    client.wait_installed(joined)
    wait_sets_cleaned(server)
    server.stop()

    os.link(server.models_dir / name / model.name, server.models_dir / model.name)  # back as the crash left it
    (server.staging_dir / "sets" / f"{name}.members.json").write_text(json.dumps({"projector": joined}))
    status = server.staging_dir / "uploads" / f"{joined}.status"
    status.write_text(json.dumps({**json.loads(status.read_text()), "state": "verifying"}))

    server = start_server(env=FAST_REQUEUE)
    client = TusClient(server.url)
    client.wait_installed(joined, timeout=60)
    wait_sets_cleaned(server)
    assert os.listdir(server.models_dir) == [name]
    assert sorted(os.listdir(server.models_dir / name)) == sorted([model.name, projector.name])


def test_expired_model_set_fails_its_waiting_file(start_server: Callable[..., ServerProcess],
                                                  pair: tuple[Path, Path]) -> None:
    model, _ = pair
    server = start_server(expire_after=3, maintenance_interval=0.5)
    client = TusClient(server.url)
    waiting = send(client, model, SET, 2)
    wait_waiting(client, waiting, 1)
    failed = client.wait_state(waiting, "failed", timeout=20)
    assert "expired" in failed["reason"] and "projector" in failed["reason"], failed["reason"]
    wait_sets_cleaned(server)
    assert os.listdir(server.models_dir) == []


def test_verify_finds_a_set_changed_on_disk(server: ServerProcess, pair: tuple[Path, Path], tmp_path: Path) -> None:
    model, projector = pair
    client = TusClient(server.url)
    for upload in [send(client, path, SET, 2) for path in (model, projector)]:
        client.wait_installed(upload)
    installed = server.models_dir / SET / projector.name
    data = bytearray(installed.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the projector's tensors: the structure cannot see it, the digest can
    installed.write_bytes(bytes(data))
    assert client.get_json(f"/api/verify/{SET}")["ok"] is True
    checked = client.get_json(f"/api/verify/{SET}?sha256=1")
    assert checked["ok"] is False and projector.name in checked["reason"], checked
    # a model put where the projector was: named as a projector, it is not one
    write_model(installed)
    checked = client.get_json(f"/api/verify/{SET}")
    assert checked["ok"] is False and "named as a projector" in checked["reason"], checked
    entry = client.get_json(f"/api/models/{SET}")
    assert entry["status"] == "invalid" and "named as a projector" in entry["problem"], entry
