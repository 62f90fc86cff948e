"""Two server processes on different ports share the staging directory and Redis. A client alternates
between them per request, and PATCHes race on one upload through both: never both accepted, the bytes
on disk are always a prefix of the source, and the file installs byte-identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.wire import (
    OCTETS,
    RawPatch,
    call,
    create,
    head_offset,
    on,
    stored_bytes,
    wait_installed,
)
from tests.reliability.conftest import Figures
from tests.reliability.support import MIB, make_models, sha256_file
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess


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
    url = create(a.url, len(source), model.name)
    urls = [url, on(b, url)]
    record.fault_kind = "races"
    problems: list[str] = []
    outcomes: dict[str, int] = {}
    chunk = len(source) // (4 * rounds)  # a race may keep up to 2 chunks, the alternating PATCH adds 1
    for index in range(rounds):
        offset = head_offset(urls[index % 2])
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
        offset = head_offset(urls[(index + 1) % 2])
        status, _, reply = call(urls[index % 2], "PATCH", {**OCTETS, "Upload-Offset": str(offset)},
                                source[offset:offset + chunk])
        if status != 204:
            problems.append(f"round {index}: alternating PATCH answered {status}: {reply[:200]!r}")
    offset = head_offset(urls[1])
    while offset < len(source):
        status, headers, reply = call(urls[offset // chunk % 2], "PATCH", {**OCTETS, "Upload-Offset": str(offset)},
                                      source[offset:offset + chunk])
        assert status == 204, (status, reply[:200])
        offset = int(headers["upload-offset"])
    state = wait_installed(b.url, url, timeout=60)
    if state["sha256"] != sha256_file(model) or sha256_file(a.models_dir / model.name) != sha256_file(model):
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
