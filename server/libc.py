"""The C library, for the Linux calls Python's os module lacks (sync_file_range, inotify, renameat2, mallopt)."""

from __future__ import annotations

import ctypes
import ctypes.util

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
