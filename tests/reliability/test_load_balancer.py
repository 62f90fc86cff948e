"""Losing a server behind a load balancer: nginx in front of two `modeldrop serve` processes that share the
staging directory and Redis (and two RQ workers), set up as README's "Behind a reverse proxy" says, with
both servers as upstreams and `proxy_next_upstream` to skip a dead one.

tus-js-client and the modeldrop CLI upload through nginx (behind a relay that slows each connection, so the
kills land mid-PATCH); one server is killed with SIGKILL while it is writing, again and again (each restarted
a while later, the other one killed next). Every upload must go on through the survivor from the offset it
had reached, and be installed byte-identical. The figure that matters: the time from a kill to the first
bytes the survivor accepts for an upload the dead server was writing. That is bounded by the dead holder's
Redis lock, which nobody can release: only its TTL frees it.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import NodeUpload
from tests.support.figures import Figures
from tests.support.models import MIB, make_models, sha256_of
from tests.support.processes import (
    PYTHON,
    REPO,
    NginxProcess,
    Process,
    RedisProcess,
    ServerProcess,
    WorkerProcess,
    nginx_binary,
)
from tests.support.proxy import Proxy
from tests.support.tus import TusClient
RETRY_DELAYS = [0, 200, 500, 1000] + [1000] * 300
TAKEOVER_LIMIT = 8.0  # seconds from a kill to the survivor's first accepted bytes


def writing(server: ServerProcess) -> set[str]:
    """Upload ids whose data file the server has open for writing (a PATCH in progress)."""
    found = set()
    fd_dir = Path(f"/proc/{server.pid}/fd")
    try:
        entries = os.listdir(fd_dir)
    except OSError:
        return found
    for entry in entries:
        try:
            target = os.readlink(fd_dir / entry)
            flags = int(Path(f"/proc/{server.pid}/fdinfo/{entry}").read_text().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            continue
        if target.endswith(".bin") and "/uploads/" in target and flags & 3:
            found.add(Path(target).stem)
    return found


def upload_length(server: ServerProcess, uid: str) -> int:
    return int(json.loads((server.staging_dir / "uploads" / f"{uid}.info").read_bytes())["length"])


def data_size(server: ServerProcess, uid: str) -> int:
    try:
        return (server.staging_dir / "uploads" / f"{uid}.bin").stat().st_size
    except FileNotFoundError:
        return -1


class CliUpload:
    """`modeldrop upload FILE --server URL` in the background (it waits for the install itself)."""

    def __init__(self, file: Path, server_url: str, state_file: Path, chunk_size: str | None) -> None:
        argv = [PYTHON, "-m", "modeldrop.cli.main", "upload", str(file), "--server", server_url, "--retries", "200",
                "--retry-delay", "0.2", "--state-file", str(state_file), "--quiet"]
        if chunk_size:
            argv += ["--chunk-size", chunk_size]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait(self, timeout: float) -> str:
        try:
            output, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
            return f"timed out\n{output}"
        return output

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def run_load_balancer(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                      start_worker: Callable[..., WorkerProcess], processes: list[Process], tmp_path: Path,
                      record: Figures, *, node: int, cli: int, mib: float, rate_mib: float, kills: int) -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (scripts/setup.sh test installs it)")
    record.fault_kind = "kills"
    options = {"redis_url": redis_server.url, "trust_proxy": True, "lock_timeout": 10,
               "env": {"MODELDROP_STALE_AFTER": "1", "MODELDROP_MAINTENANCE_INTERVAL": "1"}}
    servers = [start_server(**options), start_server(**options)]
    for _ in range(2):
        start_worker(redis_server.url)
    nginx = NginxProcess(tmp_path / "nginx", [server.port for server in servers])
    processes.append(nginx)
    nginx.start()
    relay = Proxy(nginx, rate=rate_mib * MIB)  # type: ignore[arg-type]
    models = make_models(tmp_path / "sources", node + cli, mib, "lb")
    node_uploads = [NodeUpload(model, f"{relay.url}/files/", retry_delays=RETRY_DELAYS,
                               chunk_size=8 * MIB if index % 2 else None)
                    for index, model in enumerate(models[:node])]
    cli_uploads = [CliUpload(model, relay.url, tmp_path / "cli-state.json", "8MiB" if index % 2 else None)
                   for index, model in enumerate(models[node:])]
    rng = random.Random(7)
    takeovers: list[float] = []
    resumed_from: list[int] = []
    problems: list[str] = []
    victim, survivor = servers  # "losing a server": always the same one, restarted a while later
    deadline = time.monotonic() + 40 + 12 * kills
    try:
        def busy() -> bool:
            return any(upload.proc.poll() is None for upload in [*node_uploads, *cli_uploads])

        while record.faults < kills and busy() and time.monotonic() < deadline:
            # after a restart, longer than nginx's fail_timeout (2 s), so nginx sends it requests again
            time.sleep(rng.uniform(2.5, 4.0) if record.faults else rng.uniform(1.0, 2.0))
            held = {uid for uid in writing(victim) if uid in _receiving(servers)}
            sizes = {uid: data_size(victim, uid) for uid in held}
            sizes = {uid: size for uid, size in sizes.items() if 0 <= size < upload_length(victim, uid)}
            if not sizes:
                continue  # the victim is writing nothing right now: wait for a moment when it is
            victim.kill()
            killed = time.monotonic()
            record.faults += 1
            waiting = dict(sizes)
            while waiting and time.monotonic() - killed < 60:
                for uid, size in list(waiting.items()):
                    if data_size(survivor, uid) > size:
                        takeovers.append(time.monotonic() - killed)
                        resumed_from.append(size)
                        del waiting[uid]
                time.sleep(0.02)
            for uid in waiting:
                problems.append(f"kill {record.faults}: upload {uid} did not move on the survivor in 60 s")
            time.sleep(rng.uniform(0.5, 2.0))
            victim.start()
        if record.faults < kills:
            record.notes.append(f"the uploads ended after {record.faults} of {kills} kills")
        assert record.faults >= max(2, kills * 2 // 3), \
            "the uploads ended before most kills: slow them down\n" + "\n".join(problems)

        for model, upload in zip(models[:node], node_uploads, strict=True):
            upload.wait(timeout=300)
            successes = upload.of("success")
            if not successes:
                record.lost += 1
                problems.append(f"{model.name}: tus-js-client gave up:\n{upload.transcript(10)}")
                continue
            status = TusClient(servers[0].url).wait_state(successes[-1]["url"], "installed", "failed", timeout=60,
                                                          interval=0.2, through_restarts=True)
            _check(record, problems, model, status, servers[0])
        for model, upload in zip(models[node:], cli_uploads, strict=True):
            output = upload.wait(timeout=300)
            if not output.startswith("installed"):
                record.lost += 1
                problems.append(f"{model.name}: modeldrop upload: {output[-1500:]}")
                continue
            _check(record, problems, model, {"state": "installed", "sha256": sha256_of(model)}, servers[0])
    finally:
        relay.close()
        for upload in [*node_uploads, *cli_uploads]:
            upload.stop()
    resumes = sum(1 for size in resumed_from if size > 0)
    record.notes.append(f"{node} tus-js-client + {cli} modeldrop upload through nginx, {mib:g} MiB each at "
                        f"{rate_mib:g} MiB/s; {len(takeovers)} uploads taken over by the survivor, {resumes} of them "
                        "at offset > 0")
    if takeovers:
        record.notes.append(f"kill -> first accepted PATCH bytes on the survivor: median "
                            f"{statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s")
    if resumes < len(resumed_from):
        problems.append(f"{len(resumed_from) - resumes} takeovers started from offset 0")
    if takeovers and max(takeovers) > TAKEOVER_LIMIT:
        problems.append(f"the survivor took up to {max(takeovers):.1f} s to accept an upload the dead server held")
    assert takeovers, "no kill hit a server while it was writing"
    assert not problems, "\n".join(problems)


def _receiving(servers: list[ServerProcess]) -> set[str]:
    """Ids of uploads not yet complete (no status file yet), from the shared staging directory."""
    uploads = servers[0].staging_dir / "uploads"
    try:
        names = os.listdir(uploads)
    except FileNotFoundError:
        return set()
    finished = {name[:-len(".status")] for name in names if name.endswith(".status")}
    return {name[:-4] for name in names if name.endswith(".bin")} - finished


def _check(record: Figures, problems: list[str], model: Path, status: dict, server: ServerProcess) -> None:  # type: ignore[type-arg]
    if status["state"] != "installed":
        record.lost += 1
        problems.append(f"{model.name}: {status['state']}: {status.get('reason')}")
    elif sha256_of(server.models_dir / model.name) != sha256_of(model) or status["sha256"] != sha256_of(model):
        record.corrupt += 1
        problems.append(f"{model.name}: installed with other bytes")
    else:
        record.completed += 1


def test_server_killed_behind_nginx(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                                    start_worker: Callable[..., WorkerProcess], processes: list[Process],
                                    tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_load_balancer(start_server, redis_server, start_worker, processes, tmp_path,
                      figures("nginx + two servers sharing staging/Redis, one killed mid-upload"),
                      node=2, cli=2, mib=64, rate_mib=1.25, kills=4)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_server_killed_behind_nginx(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                                         start_worker: Callable[..., WorkerProcess], processes: list[Process],
                                         tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_load_balancer(start_server, redis_server, start_worker, processes, tmp_path,
                      figures("nginx + two servers soak"), node=3, cli=3, mib=384, rate_mib=2, kills=16)


@pytest.mark.parametrize("forwarded", [False, True])
def test_nginx_must_pass_the_public_host(start_server: Callable[..., ServerProcess], processes: list[Process],
                                         tmp_path: Path, forwarded: bool) -> None:
    """README's nginx lines: without `proxy_set_header Host $http_host` nginx sends the upstream's name as the
    host, which the server refuses (421); with it, Location points back through nginx."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (scripts/setup.sh test installs it)")
    server = start_server(trust_proxy=True)
    nginx = NginxProcess(tmp_path / "nginx", [server.port], forwarded=forwarded)
    processes.append(nginx)
    nginx.start()
    reply = TusClient(nginx.url).create(10, metadata={"filename": "x.gguf"})
    if forwarded:
        assert reply.status_code == 201, reply.text
        assert reply.headers["location"].startswith(f"{nginx.url}/files/")
    else:
        assert reply.status_code == 421, reply.text
