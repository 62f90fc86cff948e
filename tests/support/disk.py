"""Disks for tests: a small tmpfs to fill up (root only; skipped otherwise), and what appears in a directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldrop.server.libc import IN_CREATE, IN_MOVED_TO, inotify_events, inotify_watch


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

    def __init__(self, directory: Path, moves: bool = True) -> None:
        self.directory = directory
        self.mask = IN_CREATE | (IN_MOVED_TO if moves else 0)
        self.names: list[str] = []
        self._fd = -1

    def __enter__(self) -> CreatedEntries:
        self._fd = inotify_watch(self.directory, self.mask)
        return self

    def read(self) -> list[str]:
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            # not IN_IGNORED and the like, when the directory goes away
            self.names += [name.decode() for mask, name in inotify_events(data) if mask & self.mask]
        return self.names

    def __exit__(self, *exc: object) -> None:
        try:
            self.read()
        finally:
            os.close(self._fd)
            self._fd = -1
