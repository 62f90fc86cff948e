"""Disks for tests: a small tmpfs to fill up (root only; skipped otherwise), and what appears in a directory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(mount_point: Path, mib: int) -> Iterator[Path]:
    """mount_point (created if needed) holds a `mib` MiB tmpfs until the block ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mount_point)],
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
    """A filler file that leaves `leave` bytes free on path's filesystem; unlink it to free the space."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, free_bytes(path) - leave)
    finally:
        os.close(fd)
    return filler


class CreatedEntries:
    """The names created in (and, with `moves`, renamed into) a directory while the block runs, seen by
    inotify: an entry that lives for a microsecond is reported as surely as one that stays (polling would
    miss it). `read()` collects what has happened so far; leaving the block reads the rest.

        with CreatedEntries(models) as created:
            ...
        assert created.names == []
    """

    _IN_CREATE, _IN_MOVED_TO = 0x100, 0x80
    _EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name

    def __init__(self, directory: Path, moves: bool = True) -> None:
        self.directory = directory
        self.mask = self._IN_CREATE | (self._IN_MOVED_TO if moves else 0)
        self.names: list[str] = []
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = -1

    def __enter__(self) -> CreatedEntries:
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0 or self._libc.inotify_add_watch(
                self._fd, os.fsencode(self.directory), self.mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {self.directory}")
        return self

    def read(self) -> list[str]:
        while self._fd >= 0:
            try:
                events = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(events):
                _, mask, _, length = self._EVENT.unpack_from(events, offset)
                start = offset + self._EVENT.size
                if mask & self.mask:  # not IN_IGNORED and the like, when the directory goes away
                    self.names.append(events[start:start + length].rstrip(b"\0").decode())
                offset = start + length
        return self.names

    def __exit__(self, *exc: object) -> None:
        try:
            self.read()
        finally:
            os.close(self._fd)
            self._fd = -1
