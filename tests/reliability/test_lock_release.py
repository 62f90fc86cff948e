"""The lock a PATCH holds on its upload is let go within a bound, whatever happens to its connection: at once
on a reset (RST) or a close (FIN), at `idle_timeout` for a sender that stalls with the socket open, at once
when a new request asks for the upload (tusd's lock release, survey §4.1) — also from another server process
sharing the data directory. The bytes that arrived are kept exactly, and a real client resumes where the
server says and installs the file.

Without lock release a client reconnecting (to the same process or another one) gets 423 until the dead
connection times out, and tus-js-client's retries run out and it starts over from byte 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import NodeUpload, tuspy_uploader, upload_with_node
from tests.support.figures import Figures
from tests.support.metrics import server_metric
from tests.support.models import MIB, assert_installed, make_models, sha256_of
from tests.support.processes import ServerProcess, WorkerProcess, wait_for
from tests.support.proxy import Proxy
from tests.support.tus import RawPatch, TusClient, on, stored_bytes, stored_size

IDLE_TIMEOUT = 3.0
SLACK = 3.0  # the server's idle watchdog wakes every idle_timeout/4; the machine may be busy
FIRST = 100_003  # each round's upload already holds this much when the faulty PATCH starts: it resumes mid-file
FAULTS = ["reset", "close", "stall, idle_timeout", "stall, HEAD"]


def resume(kind: str, server: ServerProcess, url: str, model: Path, offset: int, fault: str,
           problems: list[str]) -> None:
    """A real client takes the upload over from its URL; it must start from the offset the server kept."""
    if kind == "tus-js-client":
        upload = upload_with_node(model, f"{server.url}/files/", upload_url=url, timeout=120)
        heads = [event["offset"] for event in upload.of("response") if event["method"] == "HEAD"]
        if heads[:1] != [str(offset)]:
            problems.append(f"{fault}: tus-js-client resumed from {heads[:1]}, the server kept {offset}")
    else:
        uploader = tuspy_uploader(f"{server.url}/files/", model, chunk_size=2 * MIB, url=url)
        if uploader.offset != offset:
            problems.append(f"{fault}: tuspy resumed from {uploader.offset}, the server kept {offset}")
        uploader.upload()


def one_round(server: ServerProcess, model: Path, fault: str, client: str, problems: list[str]) -> float:
    """Returns how long the lock took to be let go after the fault."""
    tus = TusClient(server.url)
    source = model.read_bytes()
    url = tus.location(len(source), metadata={"filename": f"{fault.replace(', ', '-')}-{model.name}"})  # plain name
    assert tus.patch(url, source[:FIRST], 0).status_code == 204
    sent = 3 * MIB + 12345
    raw = RawPatch(url, FIRST, len(source) - FIRST)  # announcing the rest of the file, sending only `sent` of it
    raw.send(source[FIRST:FIRST + sent])
    last_byte = time.monotonic()
    time.sleep(1.0)  # let the server read what was sent (no HEAD: that would ask for the lock)
    started = time.monotonic()
    if fault in ("reset", "close"):
        raw.close(reset=fault == "reset")
        offset = tus.offset(url)
    elif fault == "stall, HEAD":
        offset = tus.offset(url)  # asks the stalled PATCH to let go at once
        raw.close()
    else:  # stall, idle_timeout: the server cuts the request by itself
        answer = raw.response_status(timeout=IDLE_TIMEOUT + SLACK + 10)
        cut_after = time.monotonic() - last_byte
        raw.close()
        # 500 read_timeout, as tusd does: a 5xx is what makes tus clients retry (they give up on a 4xx)
        if answer not in (408, 500):
            problems.append(f"{fault}: the stalled PATCH was answered {answer}")
        if cut_after < IDLE_TIMEOUT:
            problems.append(f"{fault}: the stalled PATCH was cut {cut_after:.1f}s after its last byte, "
                            f"before the idle timeout ({IDLE_TIMEOUT:g}s)")
        asking = time.monotonic()
        offset = tus.offset(url)
        if time.monotonic() - asking > 1.0:
            problems.append(f"{fault}: HEAD after the cut waited {time.monotonic() - asking:.1f}s: the lock was held")
    released = time.monotonic() - started
    bound = 2.0 if fault != "stall, idle_timeout" else IDLE_TIMEOUT + SLACK
    if released > bound:
        problems.append(f"{fault}: the lock was let go after {released:.1f}s (bound {bound:g}s)")
    if fault != "reset" and offset != FIRST + sent:  # a reset may drop what was still in the server's socket buffer
        problems.append(f"{fault}: offset {offset} after the fault, but {FIRST + sent} bytes had been sent")
    if not FIRST < offset <= FIRST + sent or stored_bytes(server, url) != source[:offset]:
        problems.append(f"{fault}: {offset} bytes kept of {FIRST + sent} sent, not the source's prefix")
    resume(client, server, url, model, offset, fault, problems)
    state = tus.wait_installed(url, timeout=60)
    if state["sha256"] != sha256_of(model):
        problems.append(f"{fault}: installed with sha256 {state['sha256']}")
    return released


def run_rounds(start_server: Callable[..., ServerProcess], tmp_path: Path, record: Figures, rounds: int) -> None:
    server = start_server(idle_timeout=IDLE_TIMEOUT, lock_timeout=5, sync_interval="1MiB")
    models = make_models(tmp_path / "sources", len(FAULTS) * rounds, 8, "lock")
    clients = ["tus-js-client", "tuspy"]
    record.runs = rounds
    record.fault_kind = "resets+closes+stalls"
    problems: list[str] = []
    worst: dict[str, float] = {}
    for index, model in enumerate(models):
        fault = FAULTS[index % len(FAULTS)]
        before = len(problems)
        worst[fault] = max(worst.get(fault, 0.0), one_round(server, model, fault, clients[index % 2], problems))
        record.faults += 1
        record.completed += len(problems) == before
        record.lost += len(problems) != before
    record.notes.append("lock let go after " + ", ".join(f"{fault} ≤{seconds:.1f}s" for fault, seconds in worst.items())
                        + f" (idle_timeout {IDLE_TIMEOUT:g}s)")
    assert not problems, "\n".join(problems)


def test_reset_closed_and_stalled_patches_release_the_lock_and_resume(start_server: Callable[..., ServerProcess],
                                                                      tmp_path: Path,
                                                                      figures: Callable[..., Figures]) -> None:
    run_rounds(start_server, tmp_path, figures("connection reset / stalled sender mid-PATCH"), rounds=1)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_reset_closed_and_stalled_patches(start_server: Callable[..., ServerProcess], tmp_path: Path,
                                               figures: Callable[..., Figures]) -> None:
    run_rounds(start_server, tmp_path, figures("connection reset / stalled sender soak"), rounds=8)


# -- another process, a half-open link, a PATCH caught mid-write --------------------------------------


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
    url = TusClient(a.url).location(len(source), metadata={"filename": model.name})
    sent = 3 * MIB + 9

    stalled = RawPatch(url, 0, len(source))
    stalled.send(source[:sent])  # then silence, with the socket open: a half-dead link
    time.sleep(0.5)
    asking = time.monotonic()
    offset = TusClient(b.url).offset(on(b, url))
    took = time.monotonic() - asking

    assert took < 3, f"server B waited {took:.1f}s for the lock held by a stalled PATCH on A"
    assert offset == sent
    assert server_metric(b.url, "modeldrop_lock_waits_total") == 1
    assert stored_bytes(a, url) == source[:sent]
    answer = stalled.response_status(timeout=5)
    assert answer is None or answer >= 500, f"the PATCH that was asked to let go was answered {answer}"

    stalled_more = source[sent:sent + MIB]
    try:
        stalled.send(stalled_more)  # the old client wakes up: nothing it sends now may be stored
    except OSError:
        pass
    stalled.close()
    assert TusClient(b.url).patch(on(b, url), source[sent:], sent).status_code == 204
    assert TusClient(a.url).patch(url, stalled_more, sent).status_code == 409, \
        "server A accepted a PATCH after B completed the upload"
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
    tus = TusClient(server.url)
    source = model.read_bytes() * 2  # 48 MiB: long enough to be caught mid-write
    for round_ in range(12):  # whether the HEAD lands during a write is luck: try often
        url = tus.location(len(source), metadata={"filename": f"round-{round_}.gguf"})
        raw = RawPatch(url, 0, len(source))
        sender = threading.Thread(target=raw.send_slowly, args=(source, 100_000 * MIB), daemon=True)
        sender.start()
        wait_for(lambda url=url: stored_size(server, url) >= 8 * MIB, 20, "8 MiB stored")
        offset = tus.offset(url)
        answer = raw.response(timeout=5)
        raw.close()
        sender.join(5)

        assert answer is not None, "the interrupted PATCH got no answer"
        status, headers = answer
        assert status >= 500 and headers.get("upload-offset") == str(offset), (status, headers)
        assert stored_bytes(server, url) == source[:offset]
        assert tus.patch(url, source[offset:offset + MIB], offset).status_code == 204
    assert "Traceback" not in server.log()
