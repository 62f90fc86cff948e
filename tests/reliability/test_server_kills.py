"""kill -9 the server again and again while real clients upload: nothing lost, nothing corrupt.

tus-js-client (retrying on its own) and tuspy (in a loop that resumes with HEAD) upload in chunks with a
pause before each PATCH, so the kills land mid-upload, some mid-request. fsync is on (the default) and
`sync_interval` is 1 MiB. After every kill the server restarts on the same port and data directory.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import Figures
from tests.reliability.support import (
    SlowNodeUpload,
    Trace,
    make_models,
    node_trace,
    sha256_file,
    tuspy_slow_upload,
    upload_id,
    wait_terminal,
    watcher_problems,
)
from tests.support.processes import ServerProcess
from tests.worker.uploads import ModelsWatcher

RETRY_DELAYS = [200, 500, 1000] + [1000] * 60


def run_kills(start_server: Callable[..., ServerProcess], tmp_path: Path, record: Figures, *, node: int, tuspy: int,
              kills: int, mib: float) -> None:
    server = start_server(sync_interval="1MiB", idle_timeout=5, lock_timeout=3)
    models = make_models(tmp_path / "sources", node + tuspy, mib, "crash")
    record.fault_kind = "kills"
    with ModelsWatcher(server.models_dir) as watcher:
        traces = upload_through_kills(server, models[:node], models[node:], record, kills)
        problems = [problem for trace in traces for problem in trace.check_resumes()]
        record.lost += len(problems)
        for trace, model in zip(traces, models):
            problems += check_installed(server, trace, model, record)
    problems += watcher_problems(watcher, models)
    resumes = sum(trace.resumed_above_zero() for trace in traces)
    record.notes.append(f"{node} tus-js-client + {tuspy} tuspy, {mib:g} MiB each, {resumes} resumes at offset > 0")
    assert not problems, "\n".join(problems) + f"\nserver log:\n{server.log()[-3000:]}"


def upload_through_kills(server: ServerProcess, node_models: list[Path], tuspy_models: list[Path], record: Figures,
                         kills: int) -> list[Trace]:
    """Starts every client, kills the server at random moments while any is still uploading; their traces."""
    endpoint = f"{server.url}/files/"
    rng = random.Random(1234)
    deadline = time.monotonic() + 600
    node_uploads = [SlowNodeUpload(path, endpoint, chunk_size=512 * 1024, delay_ms=300, retry_delays=RETRY_DELAYS)
                    for path in node_models]
    traces = [Trace(path.name) for path in tuspy_models]
    threads = [threading.Thread(target=tuspy_slow_upload, args=(endpoint, path, trace),
                                kwargs={"chunk_size": 512 * 1024, "delay": 0.3, "deadline": deadline}, daemon=True)
               for path, trace in zip(tuspy_models, traces)]
    for thread in threads:
        thread.start()
    try:
        def busy() -> bool:
            return any(upload.proc.poll() is None for upload in node_uploads) or any(t.is_alive() for t in threads)

        while record.faults < kills and busy():
            time.sleep(rng.uniform(0.4, 1.6))
            server.restart()  # SIGKILL, then the same port and data directory
            record.faults += 1
        if record.faults < kills:
            record.notes.append(f"the uploads ended after {record.faults} of {kills} kills")
        assert record.faults >= kills * 2 // 3, "the uploads ended before most kills: make them slower or bigger"
        for upload in node_uploads:
            upload.wait(timeout=max(30.0, deadline - time.monotonic()))
        for thread in threads:
            thread.join(max(1.0, deadline - time.monotonic()))
    finally:
        for upload in node_uploads:
            upload.stop()
    return [node_trace(path.name, upload) for path, upload in zip(node_models, node_uploads)] + traces


def check_installed(server: ServerProcess, trace: Trace, model: Path, record: Figures) -> list[str]:
    """The upload of `model` is installed with the source's bytes, and resumed above 0 at least once."""
    if not trace.done or trace.url is None:
        record.lost += 1
        return [f"{trace.name}: the client did not finish: {trace.error}"]
    problems = []
    status = wait_terminal(server.url, trace.url, timeout=120)
    if status["state"] != "installed":
        problems.append(f"{trace.name}: {status['state']}: {status['reason']}")
        record.lost += 1
    elif sha256_file(server.models_dir / trace.name) != sha256_file(model):
        problems.append(f"{trace.name}: installed, but its sha256 differs from the source")
        record.corrupt += 1
    else:
        record.completed += 1
    if trace.resumed_above_zero() == 0:
        problems.append(f"{trace.name}: never resumed from an offset above 0 "
                        f"(upload {upload_id(trace.url)}: {trace.events[:6]}...)")
    return problems


def test_server_killed_repeatedly_while_8_clients_upload(start_server: Callable[..., ServerProcess],
                                                         tmp_path: Path, figures: Callable[..., Figures]) -> None:
    record = figures("server kill -9 (default: 12 kills, fewer than the soak's 24 to fit the CI budget)")
    run_kills(start_server, tmp_path, record, node=4, tuspy=4, kills=12, mib=24)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_server_killed_24_times_while_12_clients_upload(start_server: Callable[..., ServerProcess],
                                                             tmp_path: Path, figures: Callable[..., Figures]) -> None:
    record = figures("server kill -9 soak")
    run_kills(start_server, tmp_path, record, node=6, tuspy=6, kills=24, mib=40)
