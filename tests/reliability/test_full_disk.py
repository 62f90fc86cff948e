"""A disk that fills up mid-upload (a 64 MiB tmpfs, root only): 507, the kept bytes are the source's
prefix, and the upload resumes and installs once space is freed. The thorough version is
tests/e2e/test_disk_full.py; this one reports figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.e2e.clients import tuspy_uploader
from tests.e2e.test_disk_full import data_dir, fill, patch_until_answered  # noqa: F401  (data_dir: the tmpfs)
from tests.e2e.wire import create, head_offset, stored_bytes, wait_installed
from tests.reliability.conftest import Figures
from tests.reliability.support import MIB, make_models, sha256_file
from tests.support.processes import ServerProcess


def test_disk_full_mid_upload_507_then_resume(start_server: Callable[..., ServerProcess], data_dir: Path,  # noqa: F811
                                             tmp_path: Path, figures: Callable[..., Figures]) -> None:
    record = figures("disk full mid-upload (64 MiB tmpfs)", "disk full")
    server = start_server(disk_headroom=0, sync_interval="1MiB")
    model = make_models(tmp_path / "sources", 1, 24, "full")[0]
    source = model.read_bytes()
    url = create(server.url, len(source), model.name)
    filler = fill(data_dir, leave=10 * MIB)
    status = patch_until_answered(url, 0, source)
    record.faults += 1
    assert status == 507, f"a PATCH that filled the disk was answered {status}"
    offset = head_offset(url)
    kept = stored_bytes(server, url)
    if not (0 < offset < len(source) and kept == source[:offset]):
        record.lost += 1
    assert 0 < offset < len(source) and kept == source[:offset], f"kept {len(kept)} bytes, offset {offset}"
    filler.unlink()
    tuspy_uploader(f"{server.url}/files/", model, chunk_size=4 * MIB, url=url).upload()
    state = wait_installed(server.url, url, timeout=60)
    if state["sha256"] != sha256_file(model):
        record.corrupt += 1
    assert state["sha256"] == sha256_file(model)
    record.completed += 1
    record.notes.append(f"507 at {offset // MIB} MiB of {len(source) // MIB}, resumed from there with tuspy")
