"""kill -9 the RQ worker mid-hash and around the rename, lose Redis's data, restart the server:
every good upload ends installed exactly once, every bad one failed with a reason, and a watcher
polling models/ every 5 ms never sees a file that is incomplete or unverified.

Timing targets (hit as best a 1 ms poll of the status record and models/ can):
  mid-hash       the big upload's checkpoint is deleted, so the worker reads all of it; killed once verifying
  before rename  the status has its sha256 and publish inode, the file is not in models/ yet
  after rename   the file is in models/, the status does not say installed yet
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ggufgen import truncate_by, write_model, write_sparse_model
from tests.support.figures import Figures
from tests.support.models import ModelsWatcher, sha256_of
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess, descendants, wait_for
from tests.support.tus import TusClient, upload_id

FAST_REQUEUE = {"MODELDROP_STALE_AFTER": "1"}
TERMINAL = ("installed", "failed")


def status_record(server: ServerProcess, upload_id: str) -> dict[str, Any]:
    try:
        return dict(json.loads((server.staging_dir / "uploads" / f"{upload_id}.status").read_bytes()))
    except (FileNotFoundError, ValueError):
        return {}


def phase(server: ServerProcess, upload_id: str, name: str) -> str:
    status = status_record(server, upload_id)
    in_models = (server.models_dir / name).exists()
    if status.get("state") in TERMINAL:
        return str(status["state"])
    if in_models:
        return "after rename"
    if status.get("publish_inode"):
        return "before rename"
    if status.get("state") == "verifying":
        return "hashing"
    return str(status.get("state") or "receiving")


def kill_at(worker: WorkerProcess, server: ServerProcess, targets: dict[str, str], wanted: str,
            timeout: float) -> str | None:
    """Polls every millisecond; SIGKILLs the worker's work horse the moment a target reaches `wanted`
    (its pid is looked up beforehand, so the kill lands within a millisecond), then the worker.
    Returns what was hit, or None if every target finished first."""
    deadline = time.monotonic() + timeout
    order = ["queued", "receiving", "hashing", "before rename", "after rename", "installed", "failed"]
    horses: list[int] = []
    looked_up = 0.0
    # only a target that reaches `wanted` under this worker counts, not one a previous kill left there
    targets = {uid: name for uid, name in targets.items() if order.index(phase(server, uid, name)) < order.index(wanted)}
    while time.monotonic() < deadline:
        if time.monotonic() - looked_up > 0.02:
            horses, looked_up = descendants(worker.pid), time.monotonic()
        open_targets = {uid: name for uid, name in targets.items() if phase(server, uid, name) not in TERMINAL}
        if not open_targets:
            return None
        for uid, name in open_targets.items():
            seen = phase(server, uid, name)
            if order.index(seen) >= order.index(wanted) and horses:
                for pid in horses:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                late = descendants(worker.pid)  # a horse forked meanwhile
                worker.kill()
                for pid in late:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                after = phase(server, uid, name)
                return f"{name} seen {seen!r}, after the kill {after!r}" + (" (too late)" if after in TERMINAL else "")
        time.sleep(0.001)
    raise AssertionError(f"no target reached {wanted!r} in {timeout}s")


def finalize_lock_free(redis_url: str, upload_id: str) -> bool:
    import redis

    return not redis.Redis.from_url(redis_url).exists(f"modeldrop:lock:finalize-{upload_id}")


def run_worker_crashes(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                       start_worker: Callable[..., WorkerProcess], tmp_path: Path, record: Figures,
                       big_gib: float) -> None:
    record.fault_kind = "faults"
    server = start_server(redis_url=redis_server.url, env=FAST_REQUEUE)  # fsync on: the default
    sources = tmp_path / "sources"
    sources.mkdir()
    big = write_sparse_model(sources / "big-mid-hash.gguf", size_gib=big_gib)
    timed = [write_sparse_model(sources / f"timed-{n}.gguf", size_gib=0.25, name=f"Timed {n}") for n in range(3)]
    truncated = truncate_by(write_model(sources / "truncated.gguf", tensors=2, tensor_elems=4096), 1000)
    mismatch = write_model(sources / "sha-mismatch.gguf", tensors=2, tensor_elems=2048)
    good = [big, *timed]
    client = TusClient(server.url)
    ids = {upload_id(client.upload_file(path)): path.name for path in good}
    big_id = next(uid for uid, name in ids.items() if name == big.name)
    bad = {upload_id(client.upload_file(truncated)): truncated.name,
           upload_id(client.upload_file(mismatch, sha256="0" * 64)): mismatch.name}
    # no checkpoint: the worker must read every byte of the big one, which takes seconds
    (server.staging_dir / "uploads" / f"{big_id}.sha256").unlink()
    workers: list[WorkerProcess] = []
    hits: list[str] = []
    with ModelsWatcher(server.models_dir) as watcher:
        workers.append(start_worker(redis_server.url))
        hit = kill_at(workers[-1], server, {big_id: big.name}, "hashing", timeout=60)
        hits.append(f"mid-hash: {hit}")
        record.faults += 1
        # the killed job leaves the upload as it was: verifying, its bytes in staging, nothing in models/
        assert os.listdir(server.models_dir) == []
        if hit is not None and "too late" not in hit:
            assert status_record(server, big_id).get("state") == "verifying"
            assert (server.staging_dir / "uploads" / f"{big_id}.bin").exists()

        redis_server.restart(lose_data=True)  # every queued job and the dead worker's locks are gone
        server.restart()  # kill -9; at start it requeues every complete upload that is not installed or failed
        record.faults += 2
        workers.append(start_worker(redis_server.url))
        timed_ids = {uid: name for uid, name in ids.items() if name != big.name}
        for wanted in ("before rename", "after rename"):
            hit = kill_at(workers[-1], server, timed_ids, wanted, timeout=120)
            hits.append(f"{wanted}: {hit or 'missed, every target was already installed'}")
            if hit is None:
                break
            record.faults += 1
            # the dead worker's finalize locks expire (Redis TTL); a restart then requeues at once
            wait_for(lambda: all(finalize_lock_free(redis_server.url, uid) for uid in ids), 40, "finalize locks")
            server.restart()
            record.faults += 1
            workers.append(start_worker(redis_server.url))

        outcomes = {uid: client.wait_state(uid, *TERMINAL, timeout=150, interval=0.2) for uid in [*ids, *bad]}
    problems = []
    for uid, name in ids.items():
        status, source = outcomes[uid], sources / name
        # installed once = one inode ever seen under the name (a log line can die with a killed worker)
        times = sum(1 for sighting in watcher.files() if sighting.relpath == name)
        if status["state"] != "installed":
            record.lost += 1
            problems.append(f"{name}: {status['state']}: {status['reason']}")
        elif sha256_of(server.models_dir / name) != sha256_of(source) or status["sha256"] != sha256_of(source) \
                or times != 1:
            record.corrupt += 1
            problems.append(f"{name}: installed {times} times, sha256 {status['sha256']}")
        else:
            record.completed += 1
    for uid, name in bad.items():
        status = outcomes[uid]
        if status["state"] != "failed" or not status["reason"]:
            record.corrupt += 1
            problems.append(f"bad upload {name} ended {status['state']} (reason {status['reason']!r})")
    record.notes.append(f"{len(bad)} bad uploads failed with a reason; {big_gib:g} GiB hashed; " + "; ".join(hits))
    installed = sorted(path.name for path in server.models_dir.iterdir() if not path.name.startswith("."))
    if installed != sorted(ids.values()):
        problems.append(f"models/ holds {installed}")
    problems += watcher.problems(good)
    assert not problems, "\n".join(problems)


def test_worker_killed_mid_hash_and_around_rename_redis_lost(
        start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_worker_crashes(start_server, redis_server, start_worker, tmp_path,
                       figures("worker kill -9 / Redis data lost / server kill -9 around finalize"), big_gib=1)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_worker_killed_with_a_4_gib_upload(
        start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_worker_crashes(start_server, redis_server, start_worker, tmp_path,
                       figures("worker kill -9 soak (4 GiB)"), big_gib=4)
