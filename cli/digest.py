"""Knowing a file's sha256 before sending it, so the server can say it has the file already.

A creation that declares the digest is answered with what the server has (README, "Resume from anywhere"): the
unfinished upload of this file to continue, or the model installed at once without a byte sent. Hashing a 40 GB
file takes a while, so the upload client hashes only when it is worth it:

- the user gave the digest (`--sha256`, FILE=SHA256): nothing to compute;
- `--hash`: always (once per version of the file: the digest is remembered with the upload's state);
- otherwise only when GET /api/lookup?size=N shows the server knows a file of the same size that this one could
  be (an installed model, or an unfinished upload under this name), i.e. the hash is compared with something.

Standard library only, like the rest of the client.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

BLOCK = 8 * 1024 * 1024


def sha256_of(path: Path, on_progress: Callable[[int], None] | None = None) -> str:
    """One sequential read; the pages read are let go so hashing a huge file does not fill the page cache."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb", buffering=0) as source:
        while block := source.read(BLOCK):
            digest.update(block)
            done += len(block)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(source.fileno(), 0, done, os.POSIX_FADV_DONTNEED)
            if on_progress is not None:
                on_progress(len(block))
    return digest.hexdigest()


def worth_hashing(candidates: Iterable[Mapping[str, Any]], filename: str) -> bool:
    """Whether the server has something a digest of this file could match: an installed model of its size (it
    is then linked under the new name, or answered as installed), or an unfinished upload of it under this name
    (resumed). /api/lookup lists only files of exactly this size."""
    for candidate in candidates:
        where = candidate.get("where")
        if where == "installed" or (where == "upload" and candidate.get("name") == filename):
            return True
    return False


def lookup_candidates(document: object) -> list[Mapping[str, Any]]:
    """The candidates of a GET /api/lookup answer; none for anything else (an older server, a proxy's page)."""
    if not isinstance(document, Mapping):
        return []
    found = document.get("candidates")
    return [item for item in found if isinstance(item, Mapping)] if isinstance(found, list) else []
