"""Two server processes on different ports share the staging directory and Redis. A client alternates
between them per request, and PATCHes race on one upload through both: never both accepted, the bytes
on disk are always a prefix of the source, and the file installs byte-identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.figures import Figures
from tests.support.models import MIB, make_models, sha256_of
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess
from tests.support.tus import RawPatch, TusClient, on, stored_bytes


def race(urls: list[str], offset: int, body: bytes) -> list[int | None]:
    """The same PATCH through every server at once, each sent at a different pace; their statuses."""
    patches = [RawPatch(url, offset, len(body)) for url in urls]
    threads = [threading.Thread(target=patch.send_slowly, args=(body, rate), daemon=True)
               for patch, rate in zip(patches, [6 * MIB, 9 * MIB])]
    for thread in threads:
        thread.start()
    statuses = [patch.response_status(timeout=30) for patch in patches]
    for patch, thread in zip(patches, threads):
        patch.close()
        thread.join(10)
    return statuses


def run_two_servers(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                    start_worker: Callable[..., WorkerProcess], tmp_path: Path, record: Figures, rounds: int) -> None:
    options = {"redis_url": redis_server.url, "sync_interval": "1MiB", "lock_timeout": 3, "idle_timeout": 5}
    a, b = start_server(**options), start_server(**options)
    start_worker(redis_server.url)
    model = make_models(tmp_path / "sources", 1, 16, "shared")[0]
    source = model.read_bytes()
    client = TusClient()  # every request names its server: the upload's URL on a or on b
    url = TusClient(a.url).location(len(source), metadata={"filename": model.name})
    urls = [url, on(b, url)]
    record.fault_kind = "races"
    problems: list[str] = []
    outcomes: dict[str, int] = {}
    chunk = len(source) // (4 * rounds)  # a race may keep up to 2 chunks, the alternating PATCH adds 1
    for index in range(rounds):
        offset = client.offset(urls[index % 2])
        assert offset + 2 * chunk <= len(source), "the races must have bytes left to fight over"
        statuses = race(urls, offset, source[offset:offset + 2 * chunk])
        record.faults += 1
        key = "+".join(str(status) for status in sorted(statuses, key=str))
        outcomes[key] = outcomes.get(key, 0) + 1
        if statuses.count(204) > 1:
            problems.append(f"round {index}: both PATCHes at offset {offset} were accepted")
        kept = stored_bytes(a, url)
        if kept != source[:len(kept)]:
            problems.append(f"round {index}: the {len(kept)} bytes on disk are not the source's prefix")
        # the client alternates servers per request: HEAD on one, PATCH the next chunk on the other
        offset = client.offset(urls[(index + 1) % 2])
        reply = client.patch(urls[index % 2], source[offset:offset + chunk], offset)
        if reply.status_code != 204:
            problems.append(f"round {index}: alternating PATCH answered {reply.status_code}: {reply.text[:200]!r}")
    offset = client.offset(urls[1])
    while offset < len(source):
        reply = client.patch(urls[offset // chunk % 2], source[offset:offset + chunk], offset)
        assert reply.status_code == 204, (reply.status_code, reply.text[:200])
        offset = int(reply.headers["Upload-Offset"])
    state = TusClient(b.url).wait_installed(url, timeout=60)
    if state["sha256"] != sha256_of(model) or sha256_of(a.models_dir / model.name) != sha256_of(model):
        problems.append("installed with the wrong bytes")
        record.corrupt += 1
    else:
        record.completed += 1
    record.lost += sum(1 for problem in problems if "prefix" in problem)
    record.notes.append("race outcomes " + ", ".join(f"{key}×{count}" for key, count in sorted(outcomes.items()))
                        + " (None = cut)")
    assert not problems, "\n".join(problems)


def test_two_servers_share_staging_and_redis(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                                             start_worker: Callable[..., WorkerProcess], tmp_path: Path,
                                             figures: Callable[..., Figures]) -> None:
    run_two_servers(start_server, redis_server, start_worker, tmp_path,
                    figures("two servers, one staging dir + Redis, racing PATCHes"), rounds=6)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_two_servers_racing(start_server: Callable[..., ServerProcess], redis_server: RedisProcess,
                                 start_worker: Callable[..., WorkerProcess], tmp_path: Path,
                                 figures: Callable[..., Figures]) -> None:
    run_two_servers(start_server, redis_server, start_worker, tmp_path,
                    figures("two servers racing soak"), rounds=30)
