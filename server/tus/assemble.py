"""Concatenation: building a final upload from its partial uploads (tus-js-client's parallelUploads).

`os.copy_file_range` copies inside the kernel (and shares extents on filesystems that reflink), so the
bytes are not pulled through Python. The partials stay until the final is installed, so a client that
retries a lost `Upload-Concat: final` response can still find them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from server import errors, gguf
from server.store.filestore import FileStore
from server.store.info import UploadInfo

_COPY_BLOCK = 1 << 30


def first_bytes(store: FileStore, parts: Sequence[UploadInfo], count: int) -> bytes:
    collected = b""
    for part in parts:
        if len(collected) >= count:
            break
        with open(store.paths(part.id).data, "rb") as source:
            collected += source.read(count - len(collected))
    return collected


def assemble_final(store: FileStore, final: UploadInfo, parts: Sequence[UploadInfo]) -> UploadInfo:
    """Creates the final upload's record and data from its complete partials; marks it queued when done."""
    if first_bytes(store, parts, len(gguf.MAGIC)) != gguf.MAGIC:
        raise errors.NotGGUF("the concatenated upload does not start with the GGUF magic: it is not a GGUF model")
    store.create(final)
    copy_parts(store, final, parts)
    return store.load(final.id)


def copy_parts(store: FileStore, final: UploadInfo, parts: Sequence[UploadInfo]) -> None:
    """(Re)builds the final's data file from scratch; also used to resume after a crash mid-assembly."""
    target = store.paths(final.id).data
    fd_out = os.open(target, os.O_WRONLY | os.O_TRUNC)
    try:
        for part in parts:
            with open(store.paths(part.id).data, "rb") as source:
                remaining = os.fstat(source.fileno()).st_size
                while remaining:
                    copied = _copy(source.fileno(), fd_out, min(remaining, _COPY_BLOCK))
                    if copied == 0:
                        raise errors.InternalError(f"partial upload {part.id} is shorter than it claimed")
                    remaining -= copied
        if store.durable:
            os.fsync(fd_out)
    finally:
        os.close(fd_out)
    store.mark_queued(store.load(final.id))


def _copy(fd_in: int, fd_out: int, count: int) -> int:
    with contextlib.suppress(OSError):
        return os.copy_file_range(fd_in, fd_out, count)
    block = os.read(fd_in, min(count, 8 << 20))  # filesystems without copy_file_range
    view = memoryview(block)
    while view:
        view = view[os.write(fd_out, view):]
    return len(block)
