"""A full disk: refused at creation when it cannot fit, 507 mid-PATCH when it fills up, no corrupt bytes."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.clients import upload_with_node
from tests.e2e.conftest import MIB
from tests.e2e.test_real_clients import assert_installed
from tests.e2e.wire import TUS, RawPatch, call, create, head_offset, patch, stored_bytes
from tests.support.processes import ServerProcess

TMPFS_MIB = 64


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The data directory on its own 64 MiB tmpfs (overrides tests/conftest.py; torn down after the servers)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free on path's filesystem."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, free_bytes(path) - leave)
    finally:
        os.close(fd)
    return filler


def patch_until_answered(url: str, offset: int, body: bytes, headers: dict[str, str] | None = None) -> int | None:
    """Sends body (fast) until the server answers, which it may do before the body is complete."""
    raw = RawPatch(url, offset, len(body), headers)
    sender = threading.Thread(target=raw.send_slowly, args=(body, 200 * MIB), daemon=True)
    sender.start()
    status = raw.response_status(timeout=20)
    raw.close()
    sender.join(10)
    return status


def test_disk_full_refuses_creation_then_507_mid_patch_and_resumes_after_space_is_freed(
        start_server: Callable[..., ServerProcess], data_dir: Path, model: Path) -> None:
    # 1 MiB batches: the write that fails is noticed while the next batch is being received, as in any
    # upload much longer than a batch
    server = start_server(disk_headroom=0, sync_interval="1MiB")
    source = model.read_bytes()

    too_big = free_bytes(data_dir) + MIB
    status, _, body = call(f"{server.url}/files/", "POST", {**TUS, "Upload-Length": str(too_big),
                                                            "Upload-Metadata": "filename YmlnLmdndWY="})
    assert status == 507, f"an upload larger than the free space was answered {status}: {body[:200]!r}"

    url = create(server.url, len(source), model.name)
    filler = fill(data_dir, leave=12 * MIB)  # the disk fills up during the PATCH, after creation
    answer = patch_until_answered(url, 0, source)
    assert answer == 507, f"a PATCH that filled the disk was answered {answer}"

    offset = head_offset(url)
    assert 0 < offset < len(source)
    assert stored_bytes(server, url) == source[:offset], "the bytes kept after ENOSPC are not the prefix sent"

    filler.unlink()
    upload = upload_with_node(model, f"{server.url}/files/", upload_url=url)
    assert [e["offset"] for e in upload.of("response") if e["method"] == "HEAD"] == [str(offset)]
    assert_installed(server, url, model)


def test_a_checksummed_patch_cut_short_by_a_full_disk_keeps_none_of_its_unverified_bytes(
        start_server: Callable[..., ServerProcess], data_dir: Path, model: Path) -> None:
    server = start_server(disk_headroom=0, sync_interval="1MiB")
    source = model.read_bytes()
    url = create(server.url, len(source), model.name)
    first = 2 * MIB + 3
    assert patch(url, 0, source[:first])[0] == 204

    fill(data_dir, leave=12 * MIB)
    rest = source[first:]
    checksum = "sha1 " + base64.b64encode(hashlib.sha1(rest).digest()).decode()
    status = patch_until_answered(url, first, rest, {"Upload-Checksum": checksum})
    assert status == 507, f"a checksummed PATCH that filled the disk was answered {status}"
    # the checksum covers the whole request, which never arrived: as after a disconnect, none of it counts
    assert head_offset(url) == first
    assert stored_bytes(server, url) == source[:first]
