"""The C library, for the Linux calls Python's os module lacks (sync_file_range, inotify, renameat2, mallopt,
fstatfs)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator
from pathlib import Path

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_heap(limit: int = 64 * 1024 * 1024) -> bool:
    """Lets glibc keep up to `limit` bytes of freed heap instead of handing it back to the kernel at once.

    Request bodies arrive as ~256 KiB bytes objects that are freed a batch (4 MiB) at a time. By default
    glibc trims the heap top after each batch and takes it back for the next, so every byte of an upload
    was page-faulted and zeroed once more: 430,000 faults per 4 GiB. Peak memory is unchanged: only
    what was already used is kept. False where mallopt is missing (not glibc).
    """
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    # fixing one threshold turns off glibc's dynamic ones, so set both: larger blocks still get own maps
    return bool(mallopt(_M_MMAP_THRESHOLD, 16 * 1024 * 1024)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))


class _StatFs(ctypes.Structure):
    # struct statfs on 64-bit Linux starts with f_type; the rest is read as padding (the struct is 120 bytes)
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def file_system_type(fd: int) -> int | None:
    """The magic number of the file system an open file is on (fstatfs's f_type), or None if unknown."""
    fstatfs = getattr(libc, "fstatfs", None)
    if fstatfs is None:
        return None
    found = _StatFs()
    if fstatfs(fd, ctypes.byref(found)) != 0:
        return None
    return int(found.f_type) & 0xFFFFFFFF


# inotify(7): the event masks this project watches for, and struct inotify_event (wd, mask, cookie, len; then
# len bytes of name, NUL-padded)
IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
_INOTIFY_EVENT = struct.Struct("iIII")


def inotify_watch(directory: Path | str, mask: int) -> int:
    """A non-blocking inotify descriptor watching `directory` for `mask`; OSError if it cannot be had."""
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
        error = ctypes.get_errno()
        os.close(fd)
        raise OSError(error, os.strerror(error))
    return int(fd)


def inotify_events(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(mask, name) of each event in what one read of an inotify descriptor returned."""
    position = 0
    while position + _INOTIFY_EVENT.size <= len(data):
        _, mask, _, name_length = _INOTIFY_EVENT.unpack_from(data, position)
        start = position + _INOTIFY_EVENT.size
        yield mask, data[start:start + name_length].split(b"\0", 1)[0]
        position = start + name_length
