"""kill -9 the server again and again while real clients upload: nothing lost, nothing corrupt.

tus-js-client (retrying on its own) and tuspy (in a loop that resumes with HEAD) upload in chunks with a
pause before each PATCH, so the kills land mid-upload, some mid-request. fsync is on (the default) and
`sync_interval` is 1 MiB. After every kill the server restarts on the same port and data directory.

Then one kill each, looked at closely: in the middle of one long PATCH (as Uppy sends a whole file), the bytes
past a sync survive and each client resumes from them (tus-js-client by itself, tuspy from its stored URL in
a new process); and SIGTERM, which answers the running PATCH and keeps its bytes.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import (RETRY_THROUGH_RESTARTS, NodeUpload, Trace, node_trace, tuspy_slow_upload,
                                   tuspy_uploader)
from tests.support.figures import Figures
from tests.support.models import MIB, ModelsWatcher, assert_installed, make_models, sha256_of
from tests.support.processes import ServerProcess, wait_for
from tests.support.proxy import Proxy
from tests.support.tus import RawPatch, TusClient, stored_bytes, upload_id

RETRY_DELAYS = [200, 500, 1000, 1000, 2000, 2000, 3000]  # ~10 s: longer than one server restart


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
    problems += watcher.problems(models)
    resumes = sum(trace.resumed_above_zero() for trace in traces)
    record.notes.append(f"{node} tus-js-client + {tuspy} tuspy, {mib:g} MiB each, {resumes} resumes at offset > 0")
    assert not problems, "\n".join(problems) + f"\nserver log:\n{server.log()[-3000:]}"


def upload_through_kills(server: ServerProcess, node_models: list[Path], tuspy_models: list[Path], record: Figures,
                         kills: int) -> list[Trace]:
    """Starts every client, kills the server at random moments while any is still uploading; their traces."""
    endpoint = f"{server.url}/files/"
    rng = random.Random(1234)
    deadline = time.monotonic() + 600
    node_uploads = [NodeUpload(path, endpoint, chunk_size=512 * 1024, delay_ms=300, retry_delays=RETRY_THROUGH_RESTARTS)
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
    status = TusClient(server.url).wait_state(trace.url, "installed", "failed", timeout=120, interval=0.2,
                                              through_restarts=True)
    if status["state"] != "installed":
        problems.append(f"{trace.name}: {status['state']}: {status['reason']}")
        record.lost += 1
    elif sha256_of(server.models_dir / trace.name) != sha256_of(model):
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


# -- one kill, looked at closely --------------------------------------------------------------------------


def kill_when_forwarded(server: ServerProcess, relay: Proxy, forwarded: int) -> None:
    """SIGKILL once `forwarded` body bytes went through the relay, then restart on the same port."""
    wait_for(lambda: relay.forwarded >= forwarded, 20, f"{forwarded} bytes on the wire")
    time.sleep(0.3)  # let the server read what is on the socket
    server.kill()
    relay.rate = None  # the resumed upload may go fast
    server.start()


def test_tus_js_client_resumes_by_itself_across_a_server_crash(
        start_server: Callable[..., ServerProcess], proxy: Callable[..., Proxy], model: Path) -> None:
    server = start_server(sync_interval="1MiB")
    relay = proxy(server, rate=2 * MIB)
    upload = NodeUpload(model, f"{relay.url}/files/", retry_delays=RETRY_DELAYS)
    try:
        kill_when_forwarded(server, relay, 3 * MIB)
        url = upload.finish(60)
    finally:
        upload.stop()

    assert upload.of("retry"), "the client never noticed the crash"
    resumed = [event for event in upload.of("response") if event["method"] == "HEAD"]
    assert resumed and resumed[0]["status"] == 200
    # bytes written past a 1 MiB sync interval survive SIGKILL: the client did not start over
    assert int(resumed[0]["offset"]) >= 1 * MIB
    assert_installed(server, url, model)


def test_tuspy_resumes_with_its_stored_url_after_a_server_crash(
        start_server: Callable[..., ServerProcess], proxy: Callable[..., Proxy], model: Path, tmp_path: Path) -> None:
    server = start_server(sync_interval="1MiB")
    relay = proxy(server, rate=2 * MIB)
    storage = tmp_path / "tuspy-urls.json"
    first = tuspy_uploader(f"{relay.url}/files/", model, chunk_size=4 * MIB, url_storage=storage)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            first.upload()
        except Exception as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    kill_when_forwarded(server, relay, 6 * MIB)  # one 4 MiB chunk done, the second half-way
    thread.join(10)
    assert failures, "tuspy (without retries) should have failed when the server died"

    url = str(first.url)
    offset = TusClient(server.url).offset(url)
    assert offset > 4 * MIB, "the bytes of the PATCH in flight were lost although 1 MiB sync interval passed"
    assert stored_bytes(server, url) == model.read_bytes()[:offset]
    resumed = tuspy_uploader(f"{relay.url}/files/", model, chunk_size=4 * MIB, url_storage=storage)
    assert (str(resumed.url), resumed.offset) == (url, offset)
    resumed.upload()
    assert_installed(server, url, model)


def test_sigterm_answers_the_running_patch_and_keeps_its_bytes(
        start_server: Callable[..., ServerProcess], model: Path) -> None:
    shutdown_timeout = 3
    server = start_server(shutdown_timeout=shutdown_timeout)
    client = TusClient(server.url)
    source = model.read_bytes()
    url = client.location(len(source), metadata={"filename": model.name})
    raw = RawPatch(url, 0, len(source))
    raw.send(source[:2 * MIB])
    time.sleep(0.5)  # the server has read these 2 MiB: they must survive the shutdown
    sender = threading.Thread(target=raw.send_slowly, args=(source[2 * MIB:], 1 * MIB), daemon=True)
    sender.start()

    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    status = raw.response_status(timeout=shutdown_timeout + 5)
    server.proc.wait(shutdown_timeout + 5)
    took = time.monotonic() - stopping
    raw.close()
    sender.join(5)

    assert status in (None, 503), f"the running PATCH was answered {status} on shutdown"
    assert took < shutdown_timeout + 1, f"the server took {took:.1f}s to exit (shutdown timeout {shutdown_timeout}s)"
    server.start()
    offset = client.offset(url)
    assert 2 * MIB <= offset <= raw.sent
    assert stored_bytes(server, url) == source[:offset]
    assert client.patch(url, source[offset:], offset).status_code == 204
    assert_installed(server, url, model)
