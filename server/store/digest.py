"""SHA-256 whose running state can be saved to disk and resumed after a restart.

hashlib's objects cannot be serialized, which would force a second full read of a 50 GB upload after any
restart. OpenSSL's SHA256_CTX is a plain 112-byte struct, so hashing through libcrypto directly lets the
store checkpoint the state next to each durable offset. Where libcrypto cannot be loaded, `available()`
is False and callers fall back to one sequential read at finalize time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import mmap
import os

from modeldrop.server.libc import libc

_CTX_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len — all 32-bit
_MAP_WINDOW = 2 * 1024 * 1024  # mapped at once by update_from_file: mapped pages count in RSS
_MAP_FAILED = ctypes.c_void_p(-1).value

libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _load_libcrypto() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.SHA256_Init.argtypes = [ctypes.c_void_p]
            lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        except (OSError, AttributeError):
            continue
        if _self_test(lib):
            return lib
    return None


def _self_test(lib: ctypes.CDLL) -> bool:
    ctx = ctypes.create_string_buffer(_CTX_SIZE)
    out = ctypes.create_string_buffer(32)
    lib.SHA256_Init(ctx)
    lib.SHA256_Update(ctx, b"modeldrop", 9)
    lib.SHA256_Final(out, ctx)
    return out.raw == hashlib.sha256(b"modeldrop").digest()


_LIB = _load_libcrypto()


def available() -> bool:
    return _LIB is not None


class ResumableSha256:
    """sha256 over a stream, with `state()` to checkpoint and `ResumableSha256(state)` to continue."""

    __slots__ = ("_ctx",)

    def __init__(self, state: bytes | None = None) -> None:
        if _LIB is None:
            raise RuntimeError("libcrypto is not available; resumable hashing is off")
        if state is None:
            self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
            _LIB.SHA256_Init(self._ctx)
        else:
            if len(state) != _CTX_SIZE:
                raise ValueError("not a sha256 checkpoint")
            self._ctx = ctypes.create_string_buffer(bytes(state), _CTX_SIZE)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if isinstance(data, bytes):
            _LIB.SHA256_Update(self._ctx, data, len(data))  # type: ignore[union-attr]
            return
        view = memoryview(data).cast("B")
        if view.readonly:
            chunk = bytes(view)
            _LIB.SHA256_Update(self._ctx, chunk, len(chunk))  # type: ignore[union-attr]
            return
        buffer = (ctypes.c_char * len(view)).from_buffer(view)
        _LIB.SHA256_Update(self._ctx, buffer, len(view))  # type: ignore[union-attr]

    def update_from_file(self, fd: int, start: int, end: int) -> None:
        """Hashes bytes start..end of an open, readable file where they lie in the page cache: mapped, not
        copied. Bytes spliced into a file never pass through Python, and reading them back would cost
        another copy per byte, as much CPU on this project's machine as the write itself (bench/)."""
        while start < end:
            base = start - start % mmap.ALLOCATIONGRANULARITY
            length = min(end - start, _MAP_WINDOW)
            size = start - base + length
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED | mmap.MAP_POPULATE, fd, base)
            if address in (None, _MAP_FAILED):
                error = ctypes.get_errno()
                raise OSError(error, f"mapping the upload to hash it failed: {os.strerror(error)}")
            try:
                _LIB.SHA256_Update(self._ctx, address + start - base, length)  # type: ignore[union-attr]
            finally:
                libc.munmap(address, size)
            start += length

    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, ctx)  # type: ignore[union-attr]
        return out.raw.hex()
