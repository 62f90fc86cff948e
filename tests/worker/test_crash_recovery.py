"""Crashes around finalize: each ends with the upload installed exactly once (or failed with a reason),
while a watcher polling models/ every 5 ms never sees an incomplete or unverified file.

The server runs with MODELDROP_STALE_AFTER=1 and MODELDROP_MAINTENANCE_INTERVAL=2 so its requeue loop
treats an untouched non-terminal upload as stuck after one second instead of sixty, checking every 2 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import write_model, write_sparse_model
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess, descendants, wait_for
from tests.worker.uploads import ModelsWatcher, TusClient, file_sha256

FAST_REQUEUE = {"MODELDROP_STALE_AFTER": "1", "MODELDROP_MAINTENANCE_INTERVAL": "2"}
RECOVERY_TIMEOUT = 100  # Redis lock TTL (15 s) + maintenance periods + hashing, with room


def crash(worker: WorkerProcess) -> None:
    """SIGKILL the worker and its work horse, as a crash of its host would. WorkerProcess.kill alone
    kills the tree too; this also checks that a horse was running, i.e. the kill lands mid-job."""
    horses = descendants(worker.pid)
    assert horses, "the worker has no work horse: the job is not running"
    worker.kill()
    for pid in horses:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in horses), 10,
             "the work horse to die")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def installs_logged(upload_id: str, *processes: ServerProcess | WorkerProcess) -> int:
    return sum(process.log().count(f"installed upload={upload_id} ") for process in processes)


def expect_installed_once(client: TusClient, upload_id: str, source: Path, watcher: ModelsWatcher,
                          *processes: ServerProcess | WorkerProcess) -> None:
    status = client.wait_for_state(upload_id, ["installed", "failed"], timeout=RECOVERY_TIMEOUT, interval=0.2)
    assert status["state"] == "installed", status
    digest = file_sha256(source)
    assert status["sha256"] == digest
    assert os.listdir(watcher.models_dir) == [source.name]
    # the job logs "installed" just after writing the status: wait for the line, then there must be one
    wait_for(lambda: installs_logged(upload_id, *processes) >= 1, 10, "the install to be logged")
    assert installs_logged(upload_id, *processes) == 1
    watcher.check({source.name: (source.stat().st_size, digest)})


@pytest.mark.parametrize("size_gib", [1, pytest.param(4, marks=pytest.mark.soak)])
def test_crash_worker_killed_mid_hash_installs_once(start_server: Callable[..., ServerProcess],
                                                     redis_server: RedisProcess,
                                                     start_worker: Callable[..., WorkerProcess],
                                                     tmp_path: Path, size_gib: int) -> None:
    server = start_server(redis_url=redis_server.url, fsync=False, env=FAST_REQUEUE)
    source = write_sparse_model(tmp_path / "big-q4.gguf", size_gib=size_gib)
    client = TusClient(server.url)
    upload_id = client.upload(source, chunk=256 * 1024 * 1024)
    assert client.status(upload_id)["state"] == "queued"
    # no checkpoint: the worker must hash every byte itself, which takes a second or more
    (server.staging_dir / "uploads" / f"{upload_id}.sha256").unlink()
    with ModelsWatcher(server.models_dir) as watcher:
        first = start_worker(redis_server.url, fsync=False)
        client.wait_for_state(upload_id, ["verifying"], timeout=30, interval=0.01)
        crash(first)
        assert client.status(upload_id)["state"] == "verifying"
        assert (server.staging_dir / "uploads" / f"{upload_id}.bin").exists()
        assert os.listdir(server.models_dir) == []
        second = start_worker(redis_server.url, fsync=False)
        expect_installed_once(client, upload_id, source, watcher, first, second)


def test_crash_redis_data_lost_requeues(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                                        start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    import redis
    from rq import Queue

    server = start_server(redis_url=redis_server.url, env=FAST_REQUEUE)
    source = write_model(tmp_path / "lost-job.gguf")
    client = TusClient(server.url)
    upload_id = client.upload(source)
    assert client.status(upload_id)["state"] == "queued"
    redis_server.restart(lose_data=True)
    assert Queue("modeldrop-finalize", connection=redis.Redis.from_url(redis_server.url)).count == 0
    with ModelsWatcher(server.models_dir) as watcher:
        worker = start_worker(redis_server.url)
        expect_installed_once(client, upload_id, source, watcher, server, worker)
    assert "requeued for finalize: " + upload_id in server.log()


def test_crash_server_killed_before_handoff_resubmits(start_server: Callable[..., ServerProcess],
                                                      redis_server: RedisProcess,
                                                      start_worker: Callable[..., WorkerProcess],
                                                      tmp_path: Path) -> None:
    import redis
    from rq.job import Job

    server = start_server(redis_url=redis_server.url)
    source = write_model(tmp_path / "handoff.gguf")
    client = TusClient(server.url)
    upload_id = client.upload(source)
    # as if the server died after the last byte was durable but before the job reached Redis
    Job.fetch(f"finalize-{upload_id}", connection=redis.Redis.from_url(redis_server.url)).delete()
    server.kill()
    with ModelsWatcher(server.models_dir) as watcher:
        server.start()
        assert "1 to finalize" in server.log()
        worker = start_worker(redis_server.url)
        expect_installed_once(client, upload_id, source, watcher, server, worker)


def test_crash_embedded_server_killed_after_last_patch(server: ServerProcess, tmp_path: Path) -> None:
    source = write_model(tmp_path / "embedded.gguf")
    client = TusClient(server.url)
    upload_id = client.create(source.name, source.stat().st_size)
    with ModelsWatcher(server.models_dir) as watcher:
        assert client.patch(upload_id, 0, source.read_bytes()).status == 204
        server.kill()  # the finalize thread may not have started, or may be anywhere in the job
        time.sleep(0.1)
        server.start()
        expect_installed_once(client, upload_id, source, watcher, server)
