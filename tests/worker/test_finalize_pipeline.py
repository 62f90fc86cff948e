"""The finalize pipeline end to end, with real processes: upload -> verify -> install (or fail with a reason).

Embedded mode runs the job in the server's own thread; Redis mode runs it in a real `modeldrop worker`
(RQ) process on the `modeldrop-finalize` queue. Both must leave the same files and statuses.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import append_junk, truncate_by, write_model, wrong_magic
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess, wait_for
from tests.support.models import ModelsWatcher, sha256_of
from tests.support.tus import TusClient, upload_id

QUEUE = "modeldrop-finalize"


def staged_data(server: ServerProcess, upload: str) -> list[str]:
    """The upload's bytes and hash checkpoint in staging (its .info and .status records stay)."""
    uploads, name = server.staging_dir / "uploads", upload_id(upload)
    return sorted(p.name for suffix in ("bin", "sha256", "pending") for p in uploads.glob(f"{name}.{suffix}"))


def assert_installed(server: ServerProcess, client: TusClient, upload: str, source: Path,
                     status: dict[str, object]) -> None:
    """The status, the file in models/, the staging store and HEAD all agree that `source` is installed."""
    digest = sha256_of(source)
    assert status["state"] == "installed", status
    assert status["reason"] is None
    assert status["final_name"] == source.name
    assert status["model"] == source.name.removesuffix(".gguf")
    assert status["sha256"] == digest
    facts = status["gguf"]
    assert isinstance(facts, dict)
    assert (facts["architecture"], facts["quantization"], facts["context_length"], facts["parameter_count"]) == (
        "llama", "Q4_K_M", 2048, 128)
    installed = server.models_dir / source.name
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert installed.read_bytes() == source.read_bytes()
    assert staged_data(server, upload) == []
    head = client.head(upload)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(source.stat().st_size)


def test_finalize_embedded_installs_verified_file(server: ServerProcess, tmp_path: Path) -> None:
    source = write_model(tmp_path / "tiny-q4.gguf")
    client = TusClient(server.url)
    with ModelsWatcher(server.models_dir) as watcher:
        upload = client.upload_file(source)
        seen: list[str] = []
        status = client.wait_state(upload, "installed", "failed", seen=seen, interval=0.02)
    assert set(seen) <= {"queued", "verifying", "installed"}, seen
    assert_installed(server, client, upload, source, status)
    watcher.check({source.name: (source.stat().st_size, sha256_of(source))})


def test_finalize_redis_runs_on_rq_queue(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                                         start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    import redis
    from rq import Queue
    from rq.job import Job

    server = start_server(redis_url=redis_server.url)
    source = write_model(tmp_path / "tiny-q4.gguf")
    client = TusClient(server.url)
    with ModelsWatcher(server.models_dir) as watcher:
        upload = client.upload_file(source)
        assert client.status(upload)["state"] == "queued"  # no worker yet: it waits on the queue
        connection = redis.Redis.from_url(redis_server.url)
        queue = Queue(QUEUE, connection=connection)
        assert queue.job_ids == [f"finalize-{upload_id(upload)}"]
        assert not (server.models_dir / source.name).exists()
        start_worker(redis_server.url)
        seen = ["queued"]
        status = client.wait_state(upload, "installed", "failed", seen=seen, interval=0.02)
    assert set(seen) <= {"queued", "verifying", "installed"}, seen
    assert_installed(server, client, upload, source, status)
    job = Job.fetch(f"finalize-{upload_id(upload)}", connection=connection)
    assert job.origin == QUEUE
    assert job.func_name == "modeldrop.worker.finalize.finalize_upload"
    assert job.args == (upload_id(upload),)
    wait_for(lambda: job.get_status() == "finished", 10, "the RQ job to finish")  # it returns after recording
    assert job.id in queue.finished_job_registry.get_job_ids()
    assert job.return_value()["state"] == "installed"
    watcher.check({source.name: (source.stat().st_size, sha256_of(source))})


# -- failures: a reason a person understands, nothing in models/ ------------------------------------------


@pytest.mark.parametrize(("damage", "words"), [
    (lambda path: truncate_by(path, 100), "truncated"),
    (lambda path: append_junk(path, 4096), "trailing data"),
], ids=["truncated", "trailing-junk"])
def test_finalize_damaged_gguf_fails_with_reason(server: ServerProcess, tmp_path: Path,
                                                 damage: Callable[[Path], Path], words: str) -> None:
    source = damage(write_model(tmp_path / "damaged.gguf"))
    client = TusClient(server.url)
    upload = client.upload_file(source)
    status = client.wait_state(upload, "installed", "failed")
    assert status["state"] == "failed"
    assert words in status["reason"], status["reason"]
    assert os.listdir(server.models_dir) == []


def test_finalize_wrong_magic_rejected_at_first_patch(server: ServerProcess, tmp_path: Path) -> None:
    source = wrong_magic(write_model(tmp_path / "ggjt.gguf"))
    client = TusClient(server.url)
    upload = client.location(source.stat().st_size, metadata={"filename": source.name})
    reply = client.patch(upload, source.read_bytes(), 0)
    assert (reply.status_code, reply.json()["error"]) == (400, "not_gguf"), (reply.status_code, reply.text)
    assert "GGUF magic" in reply.json()["message"]
    assert reply.headers["Upload-Offset"] == "0"
    status = client.status(upload)
    assert status["state"] == "failed"
    assert "GGUF" in status["reason"]
    assert os.listdir(server.models_dir) == []


def test_finalize_sha256_mismatch_fails(server: ServerProcess, tmp_path: Path) -> None:
    source = write_model(tmp_path / "tiny.gguf")
    other = "0" * 64
    client = TusClient(server.url)
    upload = client.upload_file(source, sha256=other)
    status = client.wait_state(upload, "installed", "failed")
    assert status["state"] == "failed"
    assert "sha256 mismatch" in status["reason"] and sha256_of(source) in status["reason"]
    assert other in status["reason"]
    assert os.listdir(server.models_dir) == []


def test_finalize_name_collision_keeps_hand_placed_file(server: ServerProcess, tmp_path: Path) -> None:
    source = write_model(tmp_path / "clash.gguf")
    client = TusClient(server.url)
    upload = client.location(source.stat().st_size, metadata={"filename": source.name})
    by_hand = write_model(server.models_dir / "clash.gguf", name="Placed By Hand", tensors=3)
    before = by_hand.read_bytes()
    reply = client.send_file(upload, source)
    assert reply.status_code == 204
    status = client.wait_state(upload, "installed", "failed")
    assert status["state"] == "failed"
    assert "already installed" in status["reason"]
    assert os.listdir(server.models_dir) == ["clash.gguf"]
    assert by_hand.read_bytes() == before
