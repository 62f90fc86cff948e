"""The C library, for the Linux calls Python's os module lacks (sync_file_range, inotify, renameat2)."""

from __future__ import annotations

import ctypes
import ctypes.util

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
