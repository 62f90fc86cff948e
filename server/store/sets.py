"""Split sets waiting in staging, and their expiry.

worker.finalize stages each verified shard of a split model in `<staging>/sets/<prefix>/` and records it in
`<staging>/sets/<prefix>.members.json` (shard number -> upload id), under the set's lock, until the last
shard arrives and the folder is published. A set that never completes would hold its shards there for
good; the server's maintenance pass expires it here, under the same lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from modeldrop.server import gguf
from modeldrop.server.locks import LockSpace
from modeldrop.server.store import errors
from modeldrop.server.store.filestore import FileStore, PlantedLink, read_nofollow, remove_entry

MEMBERS_SUFFIX = ".members.json"


def members_path(sets_dir: Path, prefix: str) -> Path:
    return sets_dir / f"{prefix}{MEMBERS_SUFFIX}"


def read_members(sets_dir: Path, prefix: str) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in json.loads(read_nofollow(members_path(sets_dir, prefix))).items()}
    except (FileNotFoundError, PlantedLink, ValueError):
        return {}


def lock_name(prefix: str) -> str:
    return "set-" + hashlib.sha256(prefix.encode()).hexdigest()[:32]


def expire_waiting(store: FileStore, locks: LockSpace, expire_after: float, now: float | None = None) -> list[str]:
    """Fails and frees the staged shards of sets that stopped growing; returns the expired prefixes.

    The timer is the set's: expire_after since its last shard was staged (the members file is rewritten
    each time), and it does not run while any shard of the set is still in staging as an upload of its
    own, which its own expiry governs: a slow shard does not cost the others their place.
    """
    now = time.time() if now is None else now
    sets_dir = store.staging_dir / "sets"
    try:
        names = os.listdir(sets_dir)
    except FileNotFoundError:
        return []
    in_progress = set()
    for info in store.open_uploads():
        with contextlib.suppress(gguf.GGUFError):
            shard = gguf.parse_shard_name(info.filename or "")
            if shard is not None:
                in_progress.add(shard.prefix)
    expired = []
    for name in names:
        prefix = name[:-len(MEMBERS_SUFFIX)]
        if not name.endswith(MEMBERS_SUFFIX) or prefix in in_progress or not _idle(sets_dir, prefix, expire_after, now):
            continue
        held = locks.try_acquire(lock_name(prefix))
        if held is None:
            continue  # a shard is being staged right now: the set is not idle
        try:
            # again under the lock: a shard may have been staged since the first look
            if _idle(sets_dir, prefix, expire_after, now) and _expire(store, sets_dir, prefix, expire_after):
                expired.append(prefix)
        finally:
            held.release()
    return expired


def _idle(sets_dir: Path, prefix: str, expire_after: float, now: float) -> bool:
    try:
        return now - members_path(sets_dir, prefix).stat().st_mtime > expire_after
    except FileNotFoundError:
        return False


def _expire(store: FileStore, sets_dir: Path, prefix: str, expire_after: float) -> bool:
    members = read_members(sets_dir, prefix)
    set_dir = sets_dir / prefix
    count = None
    with contextlib.suppress(OSError, gguf.GGUFError):
        for entry in os.listdir(set_dir):
            shard = gguf.parse_shard_name(entry)
            count = shard.count if shard is not None else count
    if not members or count is None:
        return False  # published already (its job records it), or nothing staged to free
    missing = gguf.missing_shards((int(number) for number in members), count)
    if not missing:
        return False  # complete: publishing it is its last shard's job
    listed = ", ".join(f"{number:05d}" for number in missing)
    reason = (f"the split set {prefix!r} expired: shard(s) {listed} of {count:05d} did not arrive within "
              f"{expire_after:g}s of the last one staged; upload the whole set again")
    for upload_id in members.values():
        with contextlib.suppress(errors.StoreError, OSError, ValueError, KeyError):
            if not store.state(upload_id).terminal:
                store.mark_failed(store.load(upload_id), reason)
    remove_entry(set_dir)
    members_path(sets_dir, prefix).unlink(missing_ok=True)  # last: it marks the set as still to be freed
    return True
