"""Two server processes share one data directory: a stalled PATCH on one lets go when the other asks.

This is survey §4.1: without lock release a client reconnecting to another process gets 423 until the
dead connection times out, and tus-js-client's retries run out and it starts over from byte 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.clients import NodeUpload
from tests.e2e.conftest import MIB
from tests.e2e.proxy import Proxy
from tests.e2e.test_real_clients import assert_installed
from tests.e2e.wire import RawPatch, create, head_offset, on, patch, stored_bytes, stored_size
from tests.server.test_observability import metric
from tests.support.processes import ServerProcess, WorkerProcess, wait_for


@pytest.mark.parametrize("backend", ["flock", "redis"])
def test_stalled_patch_on_server_a_releases_to_server_b(
        request: pytest.FixtureRequest, start_server: Callable[..., ServerProcess],
        start_worker: Callable[..., WorkerProcess], data_dir: Path, model: Path, backend: str) -> None:
    options: dict[str, object] = {"fsync": False, "idle_timeout": 60, "lock_timeout": 5}
    if backend == "redis":
        options["redis_url"] = request.getfixturevalue("redis_server").url
        start_worker(options["redis_url"])  # with Redis, finalizing is an RQ job
    a = start_server(data_dir=data_dir, **options)
    b = start_server(data_dir=data_dir, **options)
    source = model.read_bytes()
    url = create(a.url, len(source), model.name)
    sent = 3 * MIB + 9

    stalled = RawPatch(url, 0, len(source))
    stalled.send(source[:sent])  # then silence, with the socket open: a half-dead link
    time.sleep(0.5)
    asking = time.monotonic()
    offset = head_offset(on(b, url))
    took = time.monotonic() - asking

    assert took < 3, f"server B waited {took:.1f}s for the lock held by a stalled PATCH on A"
    assert offset == sent
    assert metric(httpx.get(f"{b.url}/metrics").text, "modeldrop_lock_waits_total") == 1
    assert stored_bytes(a, url) == source[:sent]
    answer = stalled.response_status(timeout=5)
    assert answer is None or answer >= 500, f"the PATCH that was asked to let go was answered {answer}"

    stalled_more = source[sent:sent + MIB]
    try:
        stalled.send(stalled_more)  # the old client wakes up: nothing it sends now may be stored
    except OSError:
        pass
    stalled.close()
    assert patch(on(b, url), sent, source[sent:])[0] == 204
    assert patch(url, sent, stalled_more)[0] == 409, "server A accepted a PATCH after B completed the upload"
    assert stored_size(a, url) in (0, len(source))  # installed (moved away) or complete, never more
    assert_installed(b, url, model)


def test_tus_js_client_reconnecting_after_a_half_open_link_takes_its_upload_back(
        start_server: Callable[..., ServerProcess], proxy: Callable[..., Proxy], model: Path) -> None:
    """The client's link dies but the server never hears of it: the retry must not wait for idle_timeout."""
    server = start_server(fsync=False, idle_timeout=60, lock_timeout=5)
    relay = proxy(server, rate=2 * MIB)
    upload = NodeUpload(model, f"{relay.url}/files/", retry_delays=[200, 500, 1000, 2000])
    try:
        wait_for(lambda: relay.forwarded >= 3 * MIB, 20, "3 MiB on the wire")
        time.sleep(0.3)
        frozen_at = relay.forwarded
        relay.rate = None
        relay.half_open()
        cut = time.monotonic()
        url = upload.finish(30)
        took = time.monotonic() - cut
    finally:
        upload.stop()

    responses = upload.of("response")
    heads = [event for event in responses if event["method"] == "HEAD"]
    assert heads and heads[0]["status"] == 200
    assert 0 < int(heads[0]["offset"]) <= frozen_at
    assert all(event["status"] != 423 for event in responses)
    assert took < 10, f"the upload took {took:.1f}s to recover from a half-open link (idle timeout 60s)"
    assert_installed(server, url, model)


def test_release_request_while_a_fast_patch_is_writing_answers_it_with_the_saved_offset(
        start_server: Callable[..., ServerProcess], model: Path) -> None:
    """The HEAD often lands while the PATCH waits for a batch being written and synced in a thread."""
    server = start_server(sync_interval="1MiB")
    source = model.read_bytes() * 2  # 48 MiB: long enough to be caught mid-write
    for round_ in range(12):  # whether the HEAD lands during a write is luck: try often
        url = create(server.url, len(source), f"round-{round_}.gguf")
        raw = RawPatch(url, 0, len(source))
        sender = threading.Thread(target=raw.send_slowly, args=(source, 100_000 * MIB), daemon=True)
        sender.start()
        wait_for(lambda url=url: stored_size(server, url) >= 8 * MIB, 20, "8 MiB stored")
        offset = head_offset(url)
        answer = raw.response(timeout=5)
        raw.close()
        sender.join(5)

        assert answer is not None, "the interrupted PATCH got no answer"
        status, headers = answer
        assert status >= 500 and headers.get("upload-offset") == str(offset), (status, headers)
        assert stored_bytes(server, url) == source[:offset]
        assert patch(url, offset, source[offset:offset + MIB])[0] == 204
    assert "Traceback" not in server.log()
