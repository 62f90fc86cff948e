"""Redis mode under kill -9: every finished upload reaches a worker within seconds, whatever was killed.

Finding 15: with one `modeldrop serve` and one `modeldrop worker` killed at random, a finished upload
stayed `queued` for minutes. The mechanism, shown by the two focused tests below:

- RQ's worker forks its scheduler as a child process. A SIGKILL of the worker alone leaves that child
  running as an orphan, and the child holds the worker's Redis socket (inherited by fork), so Redis never
  sees the dead worker's connection close and keeps its blocked `BLMOVE queue → queue:intermediate`.
- The next job pushed to the queue goes to that dead reader first (Redis serves blocked clients in the
  order they blocked): it lands in RQ's intermediate list, which nobody reads. RQ still calls it
  `queued`, so the requeue took its word for it; RQ's own cleanup looks at the list only every 10 min.

The chaos test kills the server and the worker (the main process only, as the OOM killer or
`kill -9 <pid>` does) at random moments while tus-js-client uploads, and asks each finished upload to
be installed within seconds of its last byte.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import NodeUpload
from tests.support.figures import Figures
from tests.support.models import make_models, sha256_of
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess, descendants, wait_for
from tests.support.proxy import Proxy
from tests.support.tus import TusClient, upload_id

FAST = {"MODELDROP_STALE_AFTER": "1", "MODELDROP_MAINTENANCE_INTERVAL": "1"}
QUEUE_KEY = "rq:queue:modeldrop-finalize"
REACH_WORKER = 15.0  # seconds from the last byte to installed that count as "within seconds"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_main_process(process: WorkerProcess | ServerProcess) -> None:
    """SIGKILL of the main process only, not its group: what the OOM killer or `kill -9 <pid>` does."""
    assert process.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.proc.wait(10)


class DeadReader:
    """A Redis client blocked in RQ's BLMOVE that will never read its answer: what a killed worker's
    connection is while an orphan keeps its socket open."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        words = [b"BLMOVE", QUEUE_KEY.encode(), f"{QUEUE_KEY}:intermediate".encode(), b"LEFT", b"RIGHT", b"600"]
        self.sock.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words))

    def close(self) -> None:
        self.sock.close()


def blocked_readers(client) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for entry in client.client_list() if entry.get("cmd") == "blmove")


def redis_client(redis_server: RedisProcess):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(redis_server.url)


def wait_terminal_or_none(server: ServerProcess, uid: str, timeout: float) -> dict | None:  # type: ignore[type-arg]
    try:
        return TusClient(server.url).wait_state(uid, "installed", "failed", timeout=timeout, interval=0.2)
    except TimeoutError:
        return None


def test_job_taken_by_a_dead_reader_is_requeued_within_seconds(
        start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path, figures: Callable[..., Figures]) -> None:
    record = figures("RQ job taken by a dead reader (BLMOVE into the intermediate list)")
    server = start_server(redis_url=redis_server.url, env=FAST)
    client = redis_client(redis_server)
    reader = DeadReader(redis_server.port)
    try:
        wait_for(lambda: blocked_readers(client) == 1, 5, "the dead reader to block")
        source = make_models(tmp_path / "sources", 1, 2, "dead-reader")[0]
        uid = upload_id(TusClient(server.url).upload_file(source))
        # the job went to the dead reader: in RQ's intermediate list, and RQ calls it queued
        wait_for(lambda: client.lrange(QUEUE_KEY + ":intermediate", 0, -1), 5, "the job to reach the dead reader")
        assert client.lpos(QUEUE_KEY, f"finalize-{uid}") is None
        record.faults += 1
        taken = time.monotonic()
        start_worker(redis_server.url)
        status = wait_terminal_or_none(server, uid, REACH_WORKER + 45)
        waited = time.monotonic() - taken
        record.notes.append(f"installed {waited:.1f} s after the job went to the dead reader" if status else
                            f"still {TusClient(server.url).status(uid)['state']} {waited:.0f} s after the job went "
                            "to the dead reader")
        if status and status["state"] == "installed" and \
                sha256_of(server.models_dir / source.name) == sha256_of(source):
            record.completed += 1
        else:
            record.lost += 1
        assert status is not None and status["state"] == "installed", status
        assert waited < REACH_WORKER, f"the job sat {waited:.0f} s with a dead reader"
    finally:
        reader.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_worker_leaves_no_process_behind(
        start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path, figures: Callable[..., Figures],
        workers: int) -> None:
    """kill -9 of `modeldrop worker` (main process only): RQ's scheduler child, and with --workers N the
    worker processes, die with it, Redis sees their connections close, and the next upload installs."""
    record = figures(f"worker main process kill -9 (--workers {workers}): nothing outlives it")
    server = start_server(redis_url=redis_server.url, env=FAST)
    client = redis_client(redis_server)
    worker = start_worker(redis_server.url, workers=workers)
    # every RQ worker blocks on the queue, and one of them has forked RQ's scheduler
    wait_for(lambda: blocked_readers(client) == workers and len(descendants(worker.pid)) >= workers, 30,
             "the RQ workers to block on the queue and the scheduler to start")
    time.sleep(0.5)
    tree = descendants(worker.pid)
    try:
        kill_main_process(worker)
        record.faults += 1
        time.sleep(2)
        survivors = [pid for pid in tree if alive(pid)]
        readers = blocked_readers(client)
        record.notes.append(f"{len(tree)} processes below the worker, {len(survivors)} alive 2 s after the kill, "
                            f"{readers} dead reader(s) still blocked in Redis")
        start_worker(redis_server.url)
        source = make_models(tmp_path / "sources", 1, 2, f"after-kill-{workers}")[0]
        uid = upload_id(TusClient(server.url).upload_file(source))
        began = time.monotonic()
        status = wait_terminal_or_none(server, uid, REACH_WORKER + 30)
        if status and status["state"] == "installed":
            record.completed += 1
            record.notes.append(f"the next upload installed in {time.monotonic() - began:.1f} s")
        else:
            record.lost += 1
        assert not survivors, f"processes of the killed worker still run: {survivors}"
        assert readers == 0, "Redis still has a blocked BLMOVE of the killed worker"
        assert status is not None and status["state"] == "installed", status
        assert time.monotonic() - began < REACH_WORKER
    finally:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


RETRY_DELAYS = [0, 200, 500, 1000] + [1000] * 200


def run_chaos(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
              start_worker: Callable[..., WorkerProcess], tmp_path: Path, record: Figures, *, uploads: int,
              mib: float, kills: int, seed: int, rate_mib: float) -> None:
    """`uploads` tus-js-client uploads (one PATCH each, retries on) into one server and one worker, each
    killed (main process only) at random moments 0.5-2.5 s apart, server 70 %, worker 30 %, restarted
    0.1-1 s later. Every upload must be installed byte-identical within seconds of the chaos's end.
    The clients go through a relay that limits each connection to `rate_mib` MiB/s: loopback is so fast
    here that the uploads would end before the kills begin."""
    record.fault_kind = "kills"
    server = start_server(redis_url=redis_server.url, env=FAST, sync_interval="4MiB", idle_timeout=5,
                          lock_timeout=3)
    worker = start_worker(redis_server.url)
    models = make_models(tmp_path / "sources", uploads, mib, "chaos")
    relay = Proxy(server, rate=rate_mib * 1024 * 1024)
    clients = [NodeUpload(model, f"{relay.url}/files/", retry_delays=RETRY_DELAYS) for model in models]
    rng = random.Random(seed)
    kinds = {"server": 0, "worker": 0}
    orphans: list[int] = []
    chaos_end = time.time()
    try:
        while record.faults < kills and any(client.proc.poll() is None for client in clients):
            time.sleep(rng.uniform(0.5, 2.5))
            victim: ServerProcess | WorkerProcess = server if rng.random() < 0.7 else worker
            tree = descendants(victim.pid)
            kill_main_process(victim)
            record.faults += 1
            kinds[victim.name] += 1
            time.sleep(rng.uniform(0.1, 1.0))
            orphans += [pid for pid in tree if alive(pid)]
            victim.start()
            chaos_end = time.time()
        for client in clients:
            client.wait(timeout=120)
        problems, waits, resumes = [], [], 0
        for model, client in zip(models, clients, strict=True):
            successes = client.of("success")
            resumes += sum(1 for event in client.of("response")
                           if event["method"] == "HEAD" and event["status"] == 200 and int(event["offset"] or 0) > 0)
            if not successes:
                record.lost += 1
                problems.append(f"{model.name}: tus-js-client gave up:\n{client.transcript(10)}")
                continue
            last_byte = float(successes[-1]["time"])
            uid = upload_id(str(successes[-1]["url"]))
            status = wait_terminal_or_none(server, uid, REACH_WORKER + 30)
            if status is None:
                record.lost += 1
                state = (TusClient(server.url).try_status(uid) or {}).get("state")
                problems.append(f"{model.name}: still {state} {time.time() - max(last_byte, chaos_end):.0f} s after "
                                "its last byte and the last restart")
                continue
            waits.append(max(0.0, time.time() - max(last_byte, chaos_end)))
            if status["state"] != "installed":
                record.lost += 1
                problems.append(f"{model.name}: {status['state']}: {status['reason']}")
            elif sha256_of(server.models_dir / model.name) != sha256_of(model) or \
                    status["sha256"] != sha256_of(model):
                record.corrupt += 1
                problems.append(f"{model.name}: installed with other bytes")
            else:
                record.completed += 1
        record.notes.append(f"{kinds['server']} server + {kinds['worker']} worker kills, {uploads} × {mib:g} MiB "
                            f"tus-js-client one PATCH each, {resumes} resumes at offset > 0, "
                            f"{len(orphans)} orphan(s) of killed processes")
        if waits:
            record.notes.append(f"installed after max(last byte, last restart): median "
                                f"{statistics.median(waits):.1f} s, max {max(waits):.1f} s")
        slow = [wait for wait in waits if wait > REACH_WORKER]
        if slow:
            problems.append(f"installed only {max(slow):.0f} s after the last byte and the last restart")
        if orphans:
            problems.append(f"processes outlived their killed parent: {orphans}")
        if record.faults < kills // 2:  # a chaos run whose uploads outran it proves nothing
            problems.append(f"only {record.faults} of {kills} kills landed before the uploads ended")
        assert not problems, "\n".join(problems) + f"\nworker log:\n{worker.log()[-2000:]}"
    finally:
        relay.close()
        for client in clients:
            client.stop()
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_server_and_worker_killed_at_random_while_uploading(
        start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_chaos(start_server, redis_server, start_worker, tmp_path,
              figures("server/worker kill -9 at random, Redis mode (finding 15)"),
              uploads=4, mib=64, kills=8, seed=15, rate_mib=12)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_server_and_worker_killed_at_random_while_uploading(
        start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_chaos(start_server, redis_server, start_worker, tmp_path,
              figures("server/worker kill -9 at random, Redis mode soak (finding 15's sizes)"),
              uploads=4, mib=384, kills=12, seed=1515, rate_mib=16)
