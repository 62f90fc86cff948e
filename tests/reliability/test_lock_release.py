"""A PATCH whose connection is reset (RST) or whose sender stalls with the socket open: the upload's lock
is let go within the configured bound (at once on RST, at `idle_timeout` for a stall, at once when a new
HEAD asks), the bytes that arrived are kept exactly, and a real client resumes and installs the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.clients import tuspy_uploader, upload_with_node
from tests.e2e.wire import RawPatch, create, head_offset, stored_bytes, wait_installed
from tests.reliability.conftest import Figures
from tests.reliability.support import MIB, make_models, sha256_file
from tests.support.processes import ServerProcess

IDLE_TIMEOUT = 3.0
SLACK = 3.0  # the server's idle watchdog wakes every idle_timeout/4; the machine may be busy


def start_patch(url: str, source: bytes, sent: int) -> RawPatch:
    """A PATCH announcing the whole file that sends only `sent` bytes, once they are on the server's disk."""
    raw = RawPatch(url, 0, len(source))
    raw.send(source[:sent])
    return raw


def resume(kind: str, server: ServerProcess, url: str, model: Path) -> None:
    if kind == "tus-js-client":
        upload_with_node(model, f"{server.url}/files/", upload_url=url, timeout=120)
    else:
        uploader = tuspy_uploader(f"{server.url}/files/", model, chunk_size=2 * MIB, url=url)
        uploader.upload()


def one_round(server: ServerProcess, model: Path, fault: str, client: str, problems: list[str]) -> float:
    """Returns how long the lock took to be let go after the fault."""
    source = model.read_bytes()
    url = create(server.url, len(source), f"{fault.replace(', ', '-')}-{model.name}")  # a plain name
    sent = 3 * MIB + 12345
    raw = start_patch(url, source, sent)
    time.sleep(1.0)  # let the server read what was sent (no HEAD: that would ask for the lock)
    started = time.monotonic()
    if fault == "reset":
        raw.close(reset=True)
        offset = head_offset(url)
    elif fault == "stall, HEAD":
        offset = head_offset(url)  # asks the stalled PATCH to let go at once
        raw.close()
    else:  # stall, idle_timeout: the server cuts the request by itself
        answer = raw.response_status(timeout=IDLE_TIMEOUT + SLACK + 10)
        raw.close()
        # 500 read_timeout, as tusd does: a 5xx is what makes tus clients retry (they give up on a 4xx)
        if answer not in (408, 500):
            problems.append(f"{fault}: the stalled PATCH was answered {answer}")
        offset = head_offset(url)
    released = time.monotonic() - started
    bound = 2.0 if fault != "stall, idle_timeout" else IDLE_TIMEOUT + SLACK
    if released > bound:
        problems.append(f"{fault}: the lock was let go after {released:.1f}s (bound {bound:g}s)")
    if fault != "reset" and offset != sent:  # a reset may drop what was still in the server's socket buffer
        problems.append(f"{fault}: offset {offset} after the fault, but {sent} bytes had been sent")
    if not 0 < offset <= sent or stored_bytes(server, url) != source[:offset]:
        problems.append(f"{fault}: {offset} bytes kept of {sent} sent, not the source's prefix")
    resume(client, server, url, model)
    state = wait_installed(server.url, url, timeout=60)
    if state["sha256"] != sha256_file(model):
        problems.append(f"{fault}: installed with sha256 {state['sha256']}")
    return released


def run_rounds(start_server: Callable[..., ServerProcess], tmp_path: Path, record: Figures, rounds: int) -> None:
    server = start_server(idle_timeout=IDLE_TIMEOUT, lock_timeout=5, sync_interval="1MiB")
    models = make_models(tmp_path / "sources", 3 * rounds, 8, "lock")
    faults = ["reset", "stall, idle_timeout", "stall, HEAD"]
    clients = ["tus-js-client", "tuspy"]
    record.runs = rounds
    record.fault_kind = "resets+stalls"
    problems: list[str] = []
    worst: dict[str, float] = {}
    for index, model in enumerate(models):
        fault = faults[index % 3]
        before = len(problems)
        worst[fault] = max(worst.get(fault, 0.0), one_round(server, model, fault, clients[index % 2], problems))
        record.faults += 1
        record.completed += len(problems) == before
        record.lost += len(problems) != before
    record.notes.append("lock let go after " + ", ".join(f"{fault} ≤{seconds:.1f}s" for fault, seconds in worst.items())
                        + f" (idle_timeout {IDLE_TIMEOUT:g}s)")
    assert not problems, "\n".join(problems)


def test_reset_and_stalled_patches_release_the_lock_and_resume(start_server: Callable[..., ServerProcess],
                                                               tmp_path: Path,
                                                               figures: Callable[..., Figures]) -> None:
    run_rounds(start_server, tmp_path, figures("connection reset / stalled sender mid-PATCH"), rounds=1)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_reset_and_stalled_patches(start_server: Callable[..., ServerProcess], tmp_path: Path,
                                        figures: Callable[..., Figures]) -> None:
    run_rounds(start_server, tmp_path, figures("connection reset / stalled sender soak"), rounds=8)
