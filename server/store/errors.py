"""What the store refuses, in words for the person uploading; it knows nothing of HTTP.

The store raises these (fresh instances, never shared ones). Whoever serves the store over a protocol maps
them to its answers in one table (server/errors.py:from_store for HTTP, as tusd's handler maps its store's
errors); the worker catches them as they are.
"""

from __future__ import annotations

import errno


class StoreError(Exception):
    default_message = "the staging store failed"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class UploadNotFound(StoreError):
    """No upload has this id (or the id is not one the store could have made)."""
    default_message = "no such upload"


class UploadGone(StoreError):
    """The upload existed and is gone: terminated, expired, failed, or used up by a concatenation."""
    default_message = "this upload expired or was terminated"


class UploadInUse(StoreError):
    """Another upload is using this one right now (a final concatenation copying its partial)."""
    default_message = "this upload is being used by another upload"


class PartsNotReady(StoreError):
    """A concatenation names uploads that are not complete partial uploads."""
    default_message = "a final upload can only be made of complete partial uploads"


class NotGGUF(StoreError):
    """The bytes cannot become a model: they do not start with the GGUF magic."""
    default_message = "the file does not start with the GGUF magic: it is not a GGUF model"


class PlantedLinkRefused(StoreError):
    """Staging holds an entry the server did not make (a symbolic link, a FIFO): nothing goes through it."""
    default_message = "staging holds an entry the server did not create; nothing is read or written through it"


class StorageFull(StoreError):
    default_message = "not enough free disk space"


class StorageFailed(StoreError):
    """The disk refused a write for another reason than space."""
    default_message = "writing to the staging disk failed"


def write_failure(exc: OSError) -> StoreError:
    """Why a request's bytes stopped reaching the disk; the bytes before the failure are kept."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("the disk is full; the bytes received so far are saved. Free space and resume the upload")
    return StorageFailed(f"writing the upload failed ({exc.strerror}); the bytes received so far are saved")
