"""The finalize lock (a Redis key with a 15 s TTL, renewed by the job) is lost mid-job: the job must stop
before it publishes anything, and the upload must still end installed exactly once.

In-process against a real redis-server: the job runs in a thread of the test, which holds it in the
middle of the hash (where a 50 GB upload spends minutes) while the lock is taken away.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import modeldrop.worker.finalize as finalize
from modeldrop.server.components import Components, build
from modeldrop.server.finalizer import finalize_lock_name
from modeldrop.server.settings import Settings
from modeldrop.server.store.info import UploadInfo
from tests.ggufgen import write_model
from tests.support.processes import RedisProcess


@pytest.fixture
def context(tmp_path: Path, redis_server: RedisProcess) -> Iterator[Components]:
    """A worker process's components, given to the RQ job as worker/main.py does."""
    (tmp_path / "models").mkdir()
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", staging_dir=tmp_path / "staging",
                        redis_url=redis_server.url)
    components = build(settings)
    finalize.use(components)
    yield components
    finalize.use(None)
    components.close()


def staged_upload(ctx: Components, tmp_path: Path, name: str = "model.gguf") -> UploadInfo:
    """A complete upload in staging, as the server leaves it after the last PATCH."""
    model = write_model(tmp_path / "source.gguf").read_bytes()
    info = ctx.store.create(UploadInfo(id=ctx.store.new_id(), length=len(model), filename=name, created_at=time.time()))
    ctx.store.paths(info.id).data.write_bytes(model)
    ctx.store.mark_queued(ctx.store.load(info.id))
    return info


class HashGate:
    """Wraps the job's sha256 step: the first call waits there until `go` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        original = finalize._sha256

        def gated(*args: Any) -> str:
            if not self.entered.is_set():
                self.entered.set()
                assert self.go.wait(30)
            return original(*args)

        monkeypatch.setattr(finalize, "_sha256", gated)


def run_job(upload_id: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["status"] = finalize.finalize_upload(upload_id)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    return thread, outcome


def lock_key(upload_id: str) -> str:
    return f"modeldrop:lock:{finalize_lock_name(upload_id)}"


def test_finalize_lock_taken_by_another_holder_mid_hash_stops_before_publishing(
        context: Components, tmp_path: Path, redis_server: RedisProcess,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_server.url)
    info = staged_upload(context, tmp_path)
    gate = HashGate(monkeypatch)
    thread, outcome = run_job(info.id)
    assert gate.entered.wait(10)
    # the lock lapsed (a stalled worker past its TTL) and another worker took the upload
    assert client.get(lock_key(info.id)) is not None
    client.delete(lock_key(info.id))
    assert client.set(lock_key(info.id), "another-worker", nx=True, px=60_000)
    gate.go.set()
    thread.join(30)
    assert not thread.is_alive()
    assert os.listdir(context.models_dir) == [], "published by a job that no longer held its lock"
    assert "status" not in outcome, f"the job went on without its lock: {outcome}"
    assert isinstance(outcome["error"], finalize.LockLost), outcome
    assert client.get(lock_key(info.id)) == b"another-worker"  # the job did not free someone else's lock
    assert context.store.state(info.id) != "installed"

    # the other holder goes away without finishing; the retry (RQ's, or the requeue loop's) installs it once
    client.delete(lock_key(info.id))
    status = finalize.finalize_upload(info.id)
    assert status["state"] == "installed", status
    assert os.listdir(context.models_dir) == ["model.gguf"]
    assert finalize.finalize_upload(info.id)["state"] == "installed"  # again: idempotent, nothing moves
    assert os.listdir(context.models_dir) == ["model.gguf"]


def fault_mid_hash(monkeypatch: pytest.MonkeyPatch, upload_id: str, fault: Callable[[], object],
                   blocks: int) -> tuple[dict[str, Any], float]:
    """The job on a long hash (a 50 GB file: many blocks, progress after each, renewals every 50 ms), `fault`
    done after the first block; the job's outcome and how long it ran."""
    monkeypatch.setattr(finalize, "RENEW_EVERY", 0.05)
    real_sha256_of = finalize.sha256_of

    def long_hash(path: Path, on_progress: Any) -> str:
        for block in range(blocks):
            if block == 1:
                fault()
            time.sleep(0.05)
            on_progress(block)
        return str(real_sha256_of(path, on_progress))

    monkeypatch.setattr(finalize, "sha256_of", long_hash)
    started = time.monotonic()
    thread, outcome = run_job(upload_id)
    thread.join(30)
    took = time.monotonic() - started
    monkeypatch.setattr(finalize, "sha256_of", real_sha256_of)
    return outcome, took


def test_finalize_renewer_that_finds_the_lock_gone_stops_the_hash(
        context: Components, tmp_path: Path, redis_server: RedisProcess,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """renew() answering False (the key expired, or is someone else's now) is a lost lock: the job stops in the
    middle of a long hash, not minutes later, and publishes nothing."""
    client = redis.Redis.from_url(redis_server.url)
    info = staged_upload(context, tmp_path)
    # expired while the worker was busy: nobody holds it now
    outcome, took = fault_mid_hash(monkeypatch, info.id, lambda: client.delete(lock_key(info.id)), blocks=200)
    assert os.listdir(context.models_dir) == [], "published by a job that no longer held its lock"
    assert isinstance(outcome.get("error"), finalize.LockLost), outcome
    assert took < 5, f"the job hashed on for {took:.1f}s after its lock was gone"
    status = finalize.finalize_upload(info.id)  # the retry
    assert status["state"] == "installed", status
    assert os.listdir(context.models_dir) == ["model.gguf"]


def test_finalize_renewer_that_cannot_reach_redis_stops_before_the_lock_can_expire(
        context: Components, tmp_path: Path, redis_server: RedisProcess,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """renew() raising (Redis gone) is not a lost lock at once, a blip may pass; but once the lock's TTL may have
    run out, another worker may hold it: the job stops then, mid-hash, and publishes nothing."""
    info = staged_upload(context, tmp_path)
    outcome, took = fault_mid_hash(monkeypatch, info.id, redis_server.kill, blocks=400)
    redis_server.restart()
    assert os.listdir(context.models_dir) == [], "published by a job that could not keep its lock"
    assert isinstance(outcome.get("error"), finalize.LockLost), outcome
    assert finalize.LOCK_TTL_MS / 1000 - 0.5 < took < finalize.LOCK_TTL_MS / 1000 + 2, \
        f"stopped {took:.1f}s after the start: not at the end of the lock's lifetime"
