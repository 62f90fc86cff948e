"""A link that drops or freezes mid-PATCH: the bytes that arrived are kept, and the upload can go on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.clients import tuspy_uploader
from tests.e2e.conftest import MIB
from tests.e2e.wire import RawPatch, create, head_offset, patch, sha256_of, stored_bytes, wait_installed
from tests.support.processes import ServerProcess


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_connection_cut_mid_patch_keeps_the_prefix_sent(start_server: Callable[..., ServerProcess], model: Path,
                                                        reset: bool) -> None:
    server = start_server(fsync=False)
    source = model.read_bytes()
    url = create(server.url, len(source), model.name)
    first = 100_003
    assert patch(url, 0, source[:first])[0] == 204

    raw = RawPatch(url, first, len(source) - first)
    raw.send(source[first:first + 11 * MIB + 5])  # more than one 8 MiB write batch, and an odd tail
    time.sleep(0.3)
    raw.close(reset=reset)

    offset = head_offset(url)
    assert first < offset <= first + raw.sent
    assert stored_bytes(server, url) == source[:offset]

    resumed = tuspy_uploader(f"{server.url}/files/", model, chunk_size=8 * MIB, url=url)
    assert resumed.offset == offset
    resumed.upload()
    state = wait_installed(server.url, url)
    assert sha256_of(server.models_dir / state["final_name"]) == sha256_of(model)


def test_stalled_sender_is_cut_after_idle_timeout_and_keeps_its_bytes(
        start_server: Callable[..., ServerProcess], model: Path) -> None:
    server = start_server(fsync=False, idle_timeout=2)
    source = model.read_bytes()
    url = create(server.url, len(source), model.name)

    raw = RawPatch(url, 0, len(source))
    raw.send(source[:3 * MIB + 1])
    stalled_at = time.monotonic()
    status = raw.response_status(timeout=10)  # the socket stays open; we send nothing more
    waited = time.monotonic() - stalled_at
    raw.close()

    assert status is None or status >= 500, f"a stalled PATCH was answered {status}"
    assert 2 <= waited < 4, f"the stalled PATCH was cut after {waited:.1f}s, idle timeout 2s"
    started = time.monotonic()
    assert head_offset(url) == 3 * MIB + 1
    assert time.monotonic() - started < 1, "the lock was still held after the stalled PATCH was cut"
    assert stored_bytes(server, url) == source[:3 * MIB + 1]
    assert patch(url, 3 * MIB + 1, source[3 * MIB + 1:])[0] == 204
    wait_installed(server.url, url)
