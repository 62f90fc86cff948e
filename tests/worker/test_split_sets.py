"""Split GGUF sets: shards uploaded one by one wait in staging, then appear in models/<prefix>/ all at once."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.ggufgen import shard_path, write_shard, write_split_set
from tests.support.processes import ServerProcess, wait_for
from tests.support.models import ModelsWatcher, sha256_of
from tests.support.tus import TusClient, upload_id

PREFIX = "split-test"
FAST_REQUEUE = {"MODELDROP_STALE_AFTER": "1", "MODELDROP_MAINTENANCE_INTERVAL": "2"}


def test_split_set_published_in_one_step(server: ServerProcess, tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, PREFIX, 3)
    client = TusClient(server.url)
    with ModelsWatcher(server.models_dir) as watcher:
        first = client.upload_file(shards[0])
        waiting = wait_for_set(client, first, missing=[2, 3])
        assert waiting["state"] == "verifying" and waiting["reason"] is None
        assert waiting["set"] == {"prefix": PREFIX, "count": 3, "present": [1], "missing": [2, 3]}
        third = client.upload_file(shards[2])
        wait_for_set(client, third, missing=[2])
        assert not (server.models_dir / PREFIX).exists()
        second = client.upload_file(shards[1])
        statuses = [client.wait_state(upload, "installed", "failed") for upload in (first, second, third)]
    for shard, status in zip(shards, statuses):
        assert status["state"] == "installed", status
        assert status["final_name"] == f"{PREFIX}/{shard.name}"
        assert status["model"] == PREFIX
        assert status["sha256"] == sha256_of(shard)
    assert sorted(os.listdir(server.models_dir)) == [PREFIX]
    assert sorted(os.listdir(server.models_dir / PREFIX)) == [shard.name for shard in shards]
    directory_sightings = [s for s in watcher.sightings.values() if s.is_dir]
    assert [s.children for s in directory_sightings] == [tuple(shard.name for shard in shards)]  # never partial
    watcher.check({f"{PREFIX}/{shard.name}": (shard.stat().st_size, sha256_of(shard)) for shard in shards})
    wait_for_sets_cleaned(server)


def wait_for_set(client: TusClient, upload: str, missing: list[int]) -> dict[str, Any]:
    """The shard's status once it is staged and names the shards its set still waits for."""

    def staged() -> dict[str, Any] | None:
        status = client.status(upload)
        assert status["state"] != "failed", status
        return status if (status.get("set") or {}).get("missing") == missing else None

    return dict(wait_for(staged, 20, f"shard {upload} to wait for shards {missing}"))


def wait_for_sets_cleaned(server: ServerProcess) -> None:
    """The set's staging is removed last, just after its uploads' statuses are written."""
    wait_for(lambda: os.listdir(server.staging_dir / "sets") == [], 5, "the staged set to be cleaned up")


def write_two_versions_of_a_set(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Two 2-shard sets under the same prefix whose shards differ in content."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    return (write_split_set(tmp_path / "old", PREFIX, 2),
            write_split_set(tmp_path / "new", PREFIX, 2, tensor_elems=128))


def test_split_set_incomplete_stays_out_of_models(server: ServerProcess, tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, PREFIX, 3)
    client = TusClient(server.url)
    ids = [client.upload_file(shard) for shard in shards[:2]]
    for upload in ids:
        status = wait_for_set(client, upload, missing=[3])
        assert status["state"] == "verifying"
    assert os.listdir(server.models_dir) == []
    assert client.get_json("/api/models")["models"] == []


def test_split_set_wrong_split_no_fails_set(server: ServerProcess, tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, PREFIX, 3)
    # shard 2's header claims to be shard 3 (split.no 2): the file name and the header disagree
    write_shard(shards[1], split_no=2, split_count=3, split_tensors_count=3, arch=None)
    client = TusClient(server.url)
    first = client.upload_file(shards[0])
    wait_for_set(client, first, missing=[2, 3])
    bad = client.upload_file(shards[1])
    status = client.wait_state(bad, "installed", "failed")
    assert status["state"] == "failed"
    assert "split.no 2" in status["reason"] and "shard 2 of 3" in status["reason"], status["reason"]
    last = client.upload_file(shards[2])
    assert client.status(last)["state"] in ("queued", "verifying")
    assert os.listdir(server.models_dir) == []


def test_split_set_shard_from_other_set_fails_all(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shards = write_split_set(tmp_path / "a", PREFIX, 3)
    # a shard from another set: right name and split.no, but its set has 5 tensors in all, not 3
    intruder = write_shard(shard_path(tmp_path / "b", PREFIX, 3, 3), split_no=2, split_count=3,
                           split_tensors_count=5, tensors=3, arch=None)
    client = TusClient(server.url)
    ids = [client.upload_file(shard) for shard in (shards[0], shards[1], intruder)]
    statuses = [client.wait_state(upload, "installed", "failed") for upload in ids]
    for status in statuses:
        assert status["state"] == "failed", status
        assert status["reason"].startswith("the split set cannot be installed: "), status["reason"]
        assert "tensor" in status["reason"]
    assert os.listdir(server.models_dir) == []
    wait_for_sets_cleaned(server)


def test_split_set_replaces_installed_set_with_allow_overwrite(start_server: Callable[..., ServerProcess],
                                                                tmp_path: Path) -> None:
    server = start_server(allow_overwrite=True)
    client = TusClient(server.url)
    old, new = write_two_versions_of_a_set(tmp_path)
    assert [sha256_of(path) for path in old] != [sha256_of(path) for path in new]
    for upload in [client.upload_file(shard) for shard in old]:
        assert client.wait_state(upload, "installed", "failed")["state"] == "installed"
    old_folder = (server.models_dir / PREFIX).stat().st_ino
    with ModelsWatcher(server.models_dir) as watcher:
        ids = [client.upload_file(shard) for shard in new]
        statuses = [client.wait_state(upload, "installed", "failed") for upload in ids]
    assert [status["state"] for status in statuses] == ["installed", "installed"], statuses
    assert (server.models_dir / PREFIX).stat().st_ino != old_folder
    assert sorted(os.listdir(server.models_dir / PREFIX)) == [shard.name for shard in new]
    for shard in new:
        assert sha256_of(server.models_dir / PREFIX / shard.name) == sha256_of(shard)
    # every folder ever seen under the name held a whole set: the old one or the new one
    assert {s.children for s in watcher.sightings.values() if s.is_dir} == {tuple(shard.name for shard in new)}
    wait_for_sets_cleaned(server)


def test_split_set_recovery_frees_the_replaced_shards_a_crash_left(start_server: Callable[..., ServerProcess],
                                                                   tmp_path: Path) -> None:
    """A crash between swapping the new set in and deleting the old one leaves the old shards in the set's
    staging folder, the members file still there and the shards' statuses short of installed. No kill
    lands between two syscalls on demand, so the test installs both sets for real and then puts back what
    such a crash leaves; the restarted server's requeue loop must finish the set and free the old shards.
    """
    server = start_server(allow_overwrite=True)
    client = TusClient(server.url)
    old, new = write_two_versions_of_a_set(tmp_path)
    for shards in (old, new):
        ids = [upload_id(client.upload_file(shard)) for shard in shards]
        for upload in ids:
            assert client.wait_state(upload, "installed", "failed")["state"] == "installed"
    wait_for_sets_cleaned(server)
    server.stop()

    staging = server.staging_dir
    (staging / "sets" / PREFIX).mkdir()
    for shard in old:
        shutil.copyfile(shard, staging / "sets" / PREFIX / shard.name)
    (staging / "sets" / f"{PREFIX}.members.json").write_text(json.dumps({"1": ids[0], "2": ids[1]}))
    for upload in ids:
        status = staging / "uploads" / f"{upload}.status"
        status.write_text(json.dumps({**json.loads(status.read_text()), "state": "verifying"}))

    server = start_server(allow_overwrite=True, env=FAST_REQUEUE)
    client = TusClient(server.url)
    for upload in ids:
        assert client.wait_state(upload, "installed", "failed", timeout=60)["state"] == "installed"
    wait_for_sets_cleaned(server)
    assert sorted(os.listdir(server.models_dir / PREFIX)) == [shard.name for shard in new]
    for shard in new:
        assert sha256_of(server.models_dir / PREFIX / shard.name) == sha256_of(shard)
