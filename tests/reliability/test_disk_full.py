"""A full disk (the data directory on a 64 MiB tmpfs, root only): refused at creation when the upload cannot
fit, 507 mid-PATCH when the disk fills up, the kept bytes are the source's prefix (none of a checksummed
request's), and the upload resumes and installs once space is freed.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.clients import upload_with_node
from tests.support.disk import fill, free_bytes, small_disk
from tests.support.figures import Figures
from tests.support.models import MIB, assert_installed
from tests.support.processes import ServerProcess
from tests.support.tus import RawPatch, TusClient, stored_bytes

TMPFS_MIB = 64


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The data directory on its own 64 MiB tmpfs (overrides tests/conftest.py; torn down after the servers)."""
    with small_disk(tmp_path / "small-disk", TMPFS_MIB) as mount_point:
        yield mount_point


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
        start_server: Callable[..., ServerProcess], data_dir: Path, model: Path,
        figures: Callable[..., Figures]) -> None:
    record = figures("disk full mid-upload (64 MiB tmpfs)", "disk full")
    # 1 MiB batches: the write that fails is noticed while the next batch is being received, as in any
    # upload much longer than a batch
    server = start_server(disk_headroom=0, sync_interval="1MiB")
    client = TusClient(server.url)
    source = model.read_bytes()

    too_big = client.create(free_bytes(data_dir) + MIB, metadata={"filename": "big.gguf"})
    assert too_big.status_code == 507, f"an upload larger than the free space was answered {too_big.status_code}"

    url = client.location(len(source), metadata={"filename": model.name})
    filler = fill(data_dir, leave=12 * MIB)  # the disk fills up during the PATCH, after creation
    answer = patch_until_answered(url, 0, source)
    record.faults += 1
    assert answer == 507, f"a PATCH that filled the disk was answered {answer}"

    offset = client.offset(url)
    kept = stored_bytes(server, url)
    if not (0 < offset < len(source) and kept == source[:offset]):
        record.lost += 1
    assert 0 < offset < len(source)
    assert kept == source[:offset], "the bytes kept after ENOSPC are not the prefix sent"

    filler.unlink()
    upload = upload_with_node(model, f"{server.url}/files/", upload_url=url)
    assert [e["offset"] for e in upload.of("response") if e["method"] == "HEAD"] == [str(offset)]
    try:
        assert_installed(server, url, model)
    except AssertionError:
        record.corrupt += 1
        raise
    record.completed += 1
    record.notes.append(f"507 at {offset // MIB} MiB of {len(source) // MIB}, resumed from there with tus-js-client")


def test_a_checksummed_patch_cut_short_by_a_full_disk_keeps_none_of_its_unverified_bytes(
        start_server: Callable[..., ServerProcess], data_dir: Path, model: Path) -> None:
    server = start_server(disk_headroom=0, sync_interval="1MiB")
    client = TusClient(server.url)
    source = model.read_bytes()
    url = client.location(len(source), metadata={"filename": model.name})
    first = 2 * MIB + 3
    assert client.patch(url, source[:first], 0).status_code == 204

    fill(data_dir, leave=12 * MIB)
    rest = source[first:]
    checksum = "sha1 " + base64.b64encode(hashlib.sha1(rest).digest()).decode()
    status = patch_until_answered(url, first, rest, {"Upload-Checksum": checksum})
    assert status == 507, f"a checksummed PATCH that filled the disk was answered {status}"
    # the checksum covers the whole request, which never arrived: as after a disconnect, none of it counts
    assert client.offset(url) == first
    assert stored_bytes(server, url) == source[:first]
