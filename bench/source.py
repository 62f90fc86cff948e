"""Source files for uploads: a real GGUF header (tests/ggufgen.py) followed by non-repeating random bytes.

The tail is a random 64 MiB block XORed with a per-block counter, so no two blocks repeat, nothing
compresses and no page is zero; generating it runs at memory speed instead of urandom's ~60 MB/s.
The file and its sha256 are cached in scratch (`<name>.json`) and reused while the size matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

BLOCK = 64 * 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def sha256_file(path: Path, drop_cache: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        done = 0
        while block := file.read(8 * 1024 * 1024):
            digest.update(block)
            done += len(block)
        if drop_cache:
            os.posix_fadvise(file.fileno(), 0, done, os.POSIX_FADV_DONTNEED)
    return digest.hexdigest()


def make_source(path: Path, size_gib: float) -> dict[str, object]:
    """Returns {"path", "length", "sha256"}, building the file only when the cache does not match."""
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("size_gib") == size_gib and path.stat().st_size == meta["length"]:
            return meta
    sys.path.insert(0, str(REPO))
    from tests.ggufgen import write_sparse_model

    path.parent.mkdir(parents=True, exist_ok=True)
    write_sparse_model(path, size_gib=size_gib)
    length = path.stat().st_size
    rng = np.random.default_rng(20240601)
    base = np.frombuffer(rng.bytes(BLOCK), dtype=np.uint64)
    with open(path, "r+b", buffering=0) as file:
        start = os.lseek(file.fileno(), 0, os.SEEK_HOLE)  # the header ends in the block before the hole
        position, index = start, 0
        while position < length:
            block = (base ^ np.uint64(0x9E3779B97F4A7C15 * (index + 1) % 2**64)).tobytes()
            view = memoryview(block)[: length - position]
            while view:
                written = os.pwrite(file.fileno(), view, position)
                view, position = view[written:], position + written
            index += 1
        os.fsync(file.fileno())
    meta = {"path": str(path), "length": length, "size_gib": size_gib, "sha256": sha256_file(path)}
    meta_path.write_text(json.dumps(meta))
    return meta


def warm(path: Path) -> None:
    """Reads the file once so every server is sent it from the page cache."""
    with open(path, "rb", buffering=0) as file:
        while file.read(16 * 1024 * 1024):
            pass
