"""Crashes around finalize: each ends with the upload installed exactly once (or failed with a reason),
while a watcher polling models/ every 5 ms never sees an incomplete or unverified file. (The RQ worker
killed mid-hash and around the rename is tests/reliability/test_worker_crashes.py.)

The server runs with MODELDROP_STALE_AFTER=1 and MODELDROP_MAINTENANCE_INTERVAL=2 so its requeue loop
treats an untouched non-terminal upload as stuck after one second instead of sixty, checking every 2 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.ggufgen import write_model
from tests.support.models import ModelsWatcher, sha256_of
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess, wait_for
from tests.support.tus import TusClient, upload_id

FAST_REQUEUE = {"MODELDROP_STALE_AFTER": "1", "MODELDROP_MAINTENANCE_INTERVAL": "2"}
RECOVERY_TIMEOUT = 100  # Redis lock TTL (15 s) + maintenance periods + hashing, with room


def installs_logged(upload: str, *processes: ServerProcess | WorkerProcess) -> int:
    return sum(process.log().count(f"installed upload={upload_id(upload)} ") for process in processes)


def expect_installed_once(client: TusClient, upload: str, source: Path, watcher: ModelsWatcher,
                          *processes: ServerProcess | WorkerProcess) -> None:
    status = client.wait_state(upload, "installed", "failed", timeout=RECOVERY_TIMEOUT, interval=0.2)
    assert status["state"] == "installed", status
    digest = sha256_of(source)
    assert status["sha256"] == digest
    assert os.listdir(watcher.models_dir) == [source.name]
    # the job logs "installed" just after writing the status: wait for the line, then there must be one
    wait_for(lambda: installs_logged(upload, *processes) >= 1, 10, "the install to be logged")
    assert installs_logged(upload, *processes) == 1
    watcher.check({source.name: (source.stat().st_size, digest)})


def test_crash_redis_data_lost_requeues(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                                        start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    import redis
    from rq import Queue

    server = start_server(redis_url=redis_server.url, env=FAST_REQUEUE)
    source = write_model(tmp_path / "lost-job.gguf")
    client = TusClient(server.url)
    upload = client.upload_file(source)
    assert client.status(upload)["state"] == "queued"
    redis_server.restart(lose_data=True)
    assert Queue("modeldrop-finalize", connection=redis.Redis.from_url(redis_server.url)).count == 0
    with ModelsWatcher(server.models_dir) as watcher:
        worker = start_worker(redis_server.url)
        expect_installed_once(client, upload, source, watcher, server, worker)
    assert "requeued for finalize: " + upload_id(upload) in server.log()


def test_crash_server_killed_before_handoff_resubmits(start_server: Callable[..., ServerProcess],
                                                      redis_server: RedisProcess,
                                                      start_worker: Callable[..., WorkerProcess],
                                                      tmp_path: Path) -> None:
    import redis
    from rq.job import Job

    server = start_server(redis_url=redis_server.url)
    source = write_model(tmp_path / "handoff.gguf")
    client = TusClient(server.url)
    upload = client.upload_file(source)
    # as if the server died after the last byte was durable but before the job reached Redis
    Job.fetch(f"finalize-{upload_id(upload)}", connection=redis.Redis.from_url(redis_server.url)).delete()
    server.kill()
    with ModelsWatcher(server.models_dir) as watcher:
        server.start()
        assert "1 to finalize" in server.log()
        worker = start_worker(redis_server.url)
        expect_installed_once(client, upload, source, watcher, server, worker)


def test_crash_embedded_server_killed_after_last_patch(server: ServerProcess, tmp_path: Path) -> None:
    source = write_model(tmp_path / "embedded.gguf")
    client = TusClient(server.url)
    upload = client.location(source.stat().st_size, metadata={"filename": source.name})
    with ModelsWatcher(server.models_dir) as watcher:
        assert client.patch(upload, source.read_bytes(), 0).status_code == 204
        server.kill()  # the finalize thread may not have started, or may be anywhere in the job
        time.sleep(0.1)
        server.start()
        expect_installed_once(client, upload, source, watcher, server)
