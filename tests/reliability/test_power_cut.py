"""Power cuts: what an acknowledged offset or an installed model is worth when the page cache is lost.

`kill -9` keeps the page cache, so test_server_kills cannot tell whether a promised offset was on disk.
Here staging and models live on tests/support/powercut.py, a FUSE pass-through filesystem that drops
every file's data written since its last fsync/fdatasync and every directory change since that
directory's last fsync when the power is cut (LazyFS's model). The first tests show the tool can fail
(what was not synced is lost, what was is kept); the scenario cuts the power under a real server and
real clients again and again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.powercut import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    PowerCut,
    fuse_available,
    renameat2,
)

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=f"no FUSE: {fuse_available()}")


@pytest.fixture
def powercut(tmp_path: Path) -> Iterator[PowerCut]:
    mount = PowerCut(tmp_path / "backing", tmp_path / "mnt", tmp_path / "powercut.log").start()
    try:
        yield mount
    finally:
        mount.shutdown()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, sync: str | None = "fsync") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        if sync == "fsync":
            os.fsync(fd)
        elif sync == "fdatasync":
            os.fdatasync(fd)
    finally:
        os.close(fd)


# -- the tool itself: it must be able to lose things ---------------------------------------------------


def test_tool_unsynced_append_is_lost_synced_data_kept(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    write_file(mnt / "a", b"synced-", sync="fdatasync")
    fsync_dir(mnt)
    write_file(mnt / "a", b"not synced", sync=None)
    assert (powercut.root / "a").read_bytes() == b"synced-not synced", "writes must go through at once"
    report = powercut.cut()
    assert (mnt / "a").read_bytes() == b"synced-"
    assert report["fdatasyncs"] == 1 and report["fsyncdirs"] == 1 and report["reverted_files"] == 1


def test_tool_overwrite_and_truncate_of_synced_bytes_are_undone(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    write_file(mnt / "a", b"0123456789")
    fsync_dir(mnt)
    fd = os.open(mnt / "a", os.O_RDWR)
    os.pwrite(fd, b"abc", 2)
    os.ftruncate(fd, 4)
    os.pwrite(fd, b"XYZWV", 3)
    os.close(fd)
    with open(mnt / "a", "r+b") as opened:  # O_TRUNC through open
        opened.write(b"new")
    powercut.cut()
    assert (mnt / "a").read_bytes() == b"0123456789"


def test_tool_create_without_directory_fsync_is_lost_even_when_the_file_was_synced(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    write_file(mnt / "lost", b"data", sync="fsync")
    write_file(mnt / "kept", b"data", sync="fsync")
    write_file(mnt / "empty", b"data", sync=None)
    fsync_dir(mnt)
    os.unlink(mnt / "lost")  # ...and a later unlink, itself not synced, is undone
    write_file(mnt / "lost2", b"data", sync="fsync")
    powercut.cut()
    assert sorted(os.listdir(mnt)) == ["empty", "kept", "lost"]
    assert (mnt / "kept").read_bytes() == b"data" and (mnt / "lost").read_bytes() == b"data"
    assert (mnt / "empty").read_bytes() == b"", "its name was synced, its data never"


def test_tool_rename_is_durable_only_once_its_directories_are_synced(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    (mnt / "staging").mkdir()
    (mnt / "models").mkdir()
    fsync_dir(mnt)
    write_file(mnt / "staging" / "one.bin", b"1")
    write_file(mnt / "staging" / "two.bin", b"2")
    write_file(mnt / "models" / "old.gguf", b"old")
    fsync_dir(mnt / "staging")
    fsync_dir(mnt / "models")
    renameat2(str(mnt / "staging" / "one.bin"), str(mnt / "models" / "one.gguf"), RENAME_NOREPLACE)
    os.replace(mnt / "staging" / "two.bin", mnt / "models" / "old.gguf")  # replaces: old.gguf must come back
    powercut.cut()
    assert sorted(os.listdir(mnt / "models")) == ["old.gguf"]
    assert (mnt / "models" / "old.gguf").read_bytes() == b"old"
    assert sorted(os.listdir(mnt / "staging")) == ["one.bin", "two.bin"]

    renameat2(str(mnt / "staging" / "one.bin"), str(mnt / "models" / "one.gguf"), RENAME_NOREPLACE)
    fsync_dir(mnt / "models")
    fsync_dir(mnt / "staging")
    powercut.cut()
    assert sorted(os.listdir(mnt / "models")) == ["old.gguf", "one.gguf"]
    assert sorted(os.listdir(mnt / "staging")) == ["two.bin"]


def test_tool_directory_moves_and_exchanges_are_undone(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    (mnt / "models").mkdir()
    (mnt / "models" / "set").mkdir()
    write_file(mnt / "models" / "set" / "old-1.gguf", b"old")
    fsync_dir(mnt / "models" / "set")
    fsync_dir(mnt / "models")
    fsync_dir(mnt)
    (mnt / "new-set").mkdir()
    write_file(mnt / "new-set" / "new-1.gguf", b"new")
    fsync_dir(mnt / "new-set")
    fsync_dir(mnt)
    renameat2(str(mnt / "new-set"), str(mnt / "models" / "set"), RENAME_EXCHANGE)
    assert os.listdir(mnt / "models" / "set") == ["new-1.gguf"]
    powercut.cut()
    assert os.listdir(mnt / "models" / "set") == ["old-1.gguf"]
    assert os.listdir(mnt / "new-set") == ["new-1.gguf"]
    (mnt / "fresh").mkdir()
    os.rename(mnt / "new-set", mnt / "models" / "moved")
    fsync_dir(mnt / "models")  # models/ is durable with "moved", but the root never lost "new-set"
    powercut.cut()
    assert sorted(os.listdir(mnt)) == ["models", "new-set"]
    assert os.listdir(mnt / "new-set") == ["new-1.gguf"]
