"""Links planted in staging are never followed by the finalizer: nothing is moved, chmod'ed or published
through them, and the uploads end `failed` with a reason."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import modeldrop.worker.finalize as finalize
from modeldrop.server.components import Components, build
from modeldrop.server.settings import Settings
from modeldrop.server.store.info import UploadInfo
from tests.ggufgen import write_model, write_split_set
from tests.support.processes import ServerProcess
from tests.support.tus import TusClient

PREFIX = "linked-set"


def test_split_set_folder_planted_as_a_link_moves_nothing_outside(server: ServerProcess, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shards = write_split_set(tmp_path, PREFIX, 2)
    (server.staging_dir / "sets").mkdir(exist_ok=True)
    (server.staging_dir / "sets" / PREFIX).symlink_to(outside)
    client = TusClient(server.url)
    uploads = [client.upload_file(shard) for shard in shards]
    statuses = [client.wait_state(upload, "installed", "failed") for upload in uploads]
    assert os.listdir(outside) == [], "shards were moved through the planted link"
    assert os.listdir(server.models_dir) == [], "something was published"
    for status in statuses:
        assert status["state"] == "failed", status
        assert "link" in status["reason"], status["reason"]


def test_sets_folder_planted_as_a_link_moves_nothing_outside(server: ServerProcess, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shards = write_split_set(tmp_path, PREFIX, 2)
    sets = server.staging_dir / "sets"
    if sets.exists():
        sets.rmdir()
    sets.symlink_to(outside)
    client = TusClient(server.url)
    uploads = [client.upload_file(shard) for shard in shards]
    statuses = [client.wait_state(upload, "installed", "failed") for upload in uploads]
    assert os.listdir(outside) == []
    assert os.listdir(server.models_dir) == []
    assert all(status["state"] == "failed" and "link" in status["reason"] for status in statuses), statuses


@pytest.fixture
def context(tmp_path: Path) -> Iterator[Components]:
    """A worker process's components, given to the RQ job as worker/main.py does."""
    (tmp_path / "models").mkdir()
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", staging_dir=tmp_path / "staging",
                        file_mode=0o644)
    components = build(settings)
    finalize.use(components)
    yield components
    finalize.use(None)


def test_finalize_data_file_planted_as_a_link_is_not_published_or_chmoded(context: Components,
                                                                         tmp_path: Path) -> None:
    """The upload completed, then its data file was swapped for a link to a valid model elsewhere."""
    outside = write_model(tmp_path / "outside.gguf")
    os.chmod(outside, 0o600)
    before = outside.read_bytes()
    info = context.store.create(UploadInfo(id=context.store.new_id(), length=len(before), filename="m.gguf",
                                           created_at=time.time()))
    data = context.store.paths(info.id).data
    data.unlink()
    data.symlink_to(outside)
    context.store.mark_queued(info)
    status = finalize.finalize_upload(info.id)
    assert status["state"] == "failed", status
    assert "link" in status["reason"], status["reason"]
    assert os.listdir(context.models_dir) == []
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600  # not chmod'ed through the link
    assert outside.read_bytes() == before


def test_finalize_shard_planted_as_a_link_in_a_staged_set_is_not_published(context: Components,
                                                                          tmp_path: Path) -> None:
    """A staged shard swapped for a link to a copy elsewhere: the set would be published with a link inside."""
    (tmp_path / "shards").mkdir()
    shards = write_split_set(tmp_path / "shards", PREFIX, 2)
    ids = []
    for shard in shards:
        body = shard.read_bytes()
        info = context.store.create(UploadInfo(id=context.store.new_id(), length=len(body), filename=shard.name,
                                               created_at=time.time()))
        context.store.paths(info.id).data.write_bytes(body)
        context.store.mark_queued(context.store.load(info.id))
        ids.append(info.id)
    assert finalize.finalize_upload(ids[0])["state"] == "verifying"  # staged, waiting for shard 2
    outside = tmp_path / "outside"
    outside.mkdir()
    copy = outside / shards[0].name
    copy.write_bytes(shards[0].read_bytes())
    staged = context.sets_dir / PREFIX / shards[0].name
    staged.unlink()
    staged.symlink_to(copy)
    finalize.finalize_upload(ids[1])
    for upload_id in ids:
        status = context.store.read_status(upload_id)
        assert status is not None and status.state == "failed", status
        assert "link" in str(status.reason), status.reason
    assert os.listdir(context.models_dir) == []
    assert os.listdir(outside) == [shards[0].name]
