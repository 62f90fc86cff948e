"""Concatenation, a store operation (tusd's ConcaterDataStore): a final upload built from partial uploads.

The tus handler parses Upload-Concat, holds the partials' locks and calls, in order: final_length (the
partials can make a final), begin_final (claims them and creates the final's record), fill_final (copies
them in). copy_parts also resumes an assembly a crash cut short.

`os.copy_file_range` copies inside the kernel (and shares extents on filesystems that reflink), so the
bytes are not pulled through Python. Each partial is claimed by its final before the copy (see
FileStore.claim_parts) and freed once the final's bytes are durable: staging holds them twice only
while they are copied.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Sequence

from modeldrop.server import gguf
from modeldrop.server.store import errors
from modeldrop.server.store.filestore import FileStore, PlantedLink, open_regular
from modeldrop.server.store.info import UploadInfo

_COPY_BLOCK = 1 << 30


def final_length(parts: Sequence[UploadInfo]) -> int:
    """The length of a final made of parts, once each is a complete partial upload."""
    for part in parts:
        if not part.is_partial:
            raise errors.PartsNotReady(f"upload {part.id} was not created with Upload-Concat: partial")
        if not part.is_complete:
            raise errors.PartsNotReady(f"partial upload {part.id} is not complete yet "
                                       "(concatenation-unfinished is not supported)")
    return sum(part.length or 0 for part in parts)


def begin_final(store: FileStore, final: UploadInfo, parts: Sequence[UploadInfo],
                admit: Callable[[Callable[[], UploadInfo]], UploadInfo]) -> UploadInfo:
    """Claims the partials for final, then has `admit` run create_final; the claims are given back if it fails.

    The caller holds the partials' locks. Admitted after the claim, so the partials this final replaces
    no longer take upload slots; created before their locks go, so a DELETE never finds a claim whose
    final is not there yet.
    """
    store.claim_parts(final.id, parts)
    try:
        return admit(lambda: create_final(store, final, parts))
    except Exception:
        store.release_parts(final.id, [part.id for part in parts])
        raise


def first_bytes(store: FileStore, parts: Sequence[UploadInfo], count: int) -> bytes:
    collected = b""
    for part in parts:
        if len(collected) >= count:
            break
        with os.fdopen(open_regular(store.paths(part.id).data, os.O_RDONLY), "rb") as source:
            collected += source.read(count - len(collected))
    return collected


def create_final(store: FileStore, final: UploadInfo, parts: Sequence[UploadInfo]) -> UploadInfo:
    """The final upload's record (and empty data file), once its claimed partials start like a model.

    Separate from fill_final so that admission can create the record under its lock, and the copy, which
    can take minutes, runs after the lock is let go.
    """
    try:
        if gguf.magic_verdict(first_bytes(store, parts, len(gguf.MAGIC))) is not True:
            raise errors.NotGGUF("the concatenated upload does not start with the GGUF magic: it is not a GGUF model")
    except FileNotFoundError:
        raise _part_gone(store, parts) from None
    except PlantedLink as exc:
        raise errors.PlantedLinkRefused(exc.strerror) from None
    return store.create(final)


def fill_final(store: FileStore, final: UploadInfo, parts: Sequence[UploadInfo]) -> UploadInfo:
    """Copies the partials into the final; marks it queued when done.

    If it cannot be made, the final is taken away again before the error is raised: a final left in
    `receiving` would hold an upload slot and its disk reservation until it expired.
    """
    try:
        copy_parts(store, final, parts)
    except BaseException:
        with contextlib.suppress(OSError):
            store.terminate(final.id, "this concatenation could not be assembled")
        raise
    return store.load(final.id)


def copy_parts(store: FileStore, final: UploadInfo, parts: Sequence[UploadInfo]) -> None:
    """(Re)builds the final's data file from scratch; also used to resume after a crash mid-assembly."""
    try:
        fd_out = open_regular(store.paths(final.id).data, os.O_WRONLY | os.O_TRUNC)
    except PlantedLink as exc:
        raise errors.PlantedLinkRefused(exc.strerror) from None
    try:
        for part in parts:
            with os.fdopen(open_regular(store.paths(part.id).data, os.O_RDONLY), "rb") as source:
                remaining = os.fstat(source.fileno()).st_size
                if remaining != part.length:
                    raise errors.UploadGone(f"partial upload {part.id} holds {remaining} bytes, not its {part.length}; "
                                      "the concatenation cannot be made")
                while remaining:
                    copied = _copy(source.fileno(), fd_out, min(remaining, _COPY_BLOCK))
                    if copied == 0:
                        raise errors.UploadGone(f"partial upload {part.id} is shorter than it claimed; the "
                                          "concatenation cannot be made")
                    remaining -= copied
        if store.durable:
            os.fsync(fd_out)
    except FileNotFoundError:
        raise _part_gone(store, parts) from None
    except PlantedLink as exc:
        raise errors.PlantedLinkRefused(exc.strerror) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.StorageFull("the disk filled up while the concatenation was assembled; free "
                                             "space and create the final upload again") from None
        raise
    finally:
        os.close(fd_out)
    store.mark_queued(store.load(final.id))
    for part in parts:  # every byte is in the final now, durably: the partials only take space
        store.terminate(part.id, f"this partial upload was concatenated into upload {final.id}")


def _part_gone(store: FileStore, parts: Sequence[UploadInfo]) -> errors.StoreError:
    missing = [part.id for part in parts if not store.paths(part.id).data.exists()]
    return errors.UploadGone(f"partial upload {', '.join(missing) or '?'} is gone (expired or terminated); the "
                       "concatenation cannot be made")


def _copy(fd_in: int, fd_out: int, count: int) -> int:
    with contextlib.suppress(OSError):
        return os.copy_file_range(fd_in, fd_out, count)
    block = os.read(fd_in, min(count, 8 << 20))  # filesystems without copy_file_range
    view = memoryview(block)
    while view:
        view = view[os.write(fd_out, view):]
    return len(block)
