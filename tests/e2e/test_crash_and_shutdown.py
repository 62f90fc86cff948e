"""The server dies (SIGKILL) or is stopped (SIGTERM) mid-PATCH: synced bytes survive, clients resume."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.clients import NodeUpload, tuspy_uploader
from tests.e2e.conftest import MIB
from tests.e2e.proxy import Proxy
from tests.e2e.test_real_clients import assert_installed
from tests.e2e.wire import RawPatch, create, head_offset, patch, stored_bytes
from tests.support.processes import ServerProcess, wait_for

RETRY_DELAYS = [200, 500, 1000, 1000, 2000, 2000, 3000]  # ~10 s: longer than a server restart


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
    offset = head_offset(url)
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
    source = model.read_bytes()
    url = create(server.url, len(source), model.name)
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
    offset = head_offset(url)
    assert 2 * MIB <= offset <= raw.sent
    assert stored_bytes(server, url) == source[:offset]
    assert patch(url, offset, source[offset:])[0] == 204
    assert_installed(server, url, model)
