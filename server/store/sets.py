"""Model sets waiting in staging, and their expiry: what set an upload is a file of, and its place in it.

A model set is what llama-server's router loads from one folder of the models directory: the shards of a split
model, or a model (one file or its shards) and its multimodal projector (an `mmproj*.gguf`). An upload is a file
of a set when its name is a shard's (`<prefix>-00001-of-00003.gguf`: the set `<prefix>` of 3 files), or when
the client named the set (`set` and `set_size` metadata: the folder's name and how many uploads make it). A set
of one projector alone adds that projector to the installed model of the set's name (worker.finalize adopts it).

worker.finalize stages each verified file of a set in `<staging>/sets/<name>/` and records it in
`<staging>/sets/<name>.members.json` (its place in the set -> upload id: a shard's number, "model" or
"projector"), under the set's lock, until the last file arrives and the folder is published. A set that never
completes would hold its files there for good; the server's maintenance pass expires it here, under the same lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat as stat_module
import time
from collections.abc import Iterable
from pathlib import Path

from modeldrop.server import gguf
from modeldrop.server.locks import LockSpace
from modeldrop.server.store import errors
from modeldrop.server.store.filestore import FileStore, PlantedLink, read_nofollow, remove_entry
from modeldrop.server.store.info import UploadInfo

MEMBERS_SUFFIX = ".members.json"
MODEL = "model"  # the key of a set's model when it is one file
PROJECTOR = "projector"  # the key of a set's projector
MAX_SET_SIZE = 100_000  # a split model has at most 99999 shards, and a set one projector more


@dataclasses.dataclass(frozen=True)
class Member:
    """An upload's place in its model set."""

    set: str  # the set's folder in the models directory, llama-server's model id for it
    size: int  # how many uploads make the set
    key: str  # its place in the set: a shard's number ("1", 1-based), MODEL or PROJECTOR
    shard: gguf.ShardName | None  # the split model's shard it is
    named: bool  # the client named the set (`set` metadata), rather than a shard's name

    @property
    def is_projector(self) -> bool:
        return self.key == PROJECTOR

    @property
    def adopts_installed(self) -> bool:
        """A set of one projector alone: it is added to the installed model of the set's name."""
        return self.is_projector and self.size == 1


def member(filename: str, set_name: str | None, set_size: int | None) -> Member | None:
    """The place in a set of an upload of `filename` (None: a file installed on its own).

    Raises gguf.GGUFError for a shard name with impossible numbers (gguf.parse_shard_name). The metadata itself
    is checked when the upload is created (admission.read_set), so a record holds a set name only with a size.
    """
    shard = gguf.parse_shard_name(filename)
    if gguf.is_projector_name(filename):
        key = PROJECTOR
    elif shard is not None:
        key = str(shard.number)
    else:
        key = MODEL
    if set_name is not None and set_size is not None:
        return Member(set_name, set_size, key, shard if key != PROJECTOR else None, named=True)
    if shard is not None and key != PROJECTOR:
        return Member(shard.prefix, shard.count, key, shard, named=False)
    return None


def member_of(info: UploadInfo) -> Member | None:
    return member(info.filename or "", info.set_name, info.set_size)


def installed_model(models_dir: Path, name: str) -> tuple[Path, list[str]] | None:
    """The installed model a projector sent alone joins: (its entry, the files to take from it): `NAME.gguf`
    itself, or the model files (not the projector) of the folder `NAME/`; None when neither is there.
    Links are never taken (lstat): the server does not make them, so one there was planted."""
    single = models_dir / f"{name}.gguf"
    with contextlib.suppress(FileNotFoundError):
        if stat_module.S_ISREG(os.lstat(single).st_mode):
            return single, [single.name]
    folder = models_dir / name
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if stat_module.S_ISDIR(os.lstat(folder).st_mode):
            return folder, sorted(child for child in os.listdir(folder) if child.endswith(".gguf"))
    return None


def adoption_problem(models_dir: Path, name: str, allow_overwrite: bool) -> str | None:
    """Why a projector sent alone (a set of one) cannot join the installed model `name`, or None."""
    installed = installed_model(models_dir, name)
    if installed is None:
        return (f"no model named {name!r} is installed ({name}.gguf or {name}/): a projector sent alone (set_size 1) "
                "joins the installed model of the set's name; to install both, upload the model with it (set_size 2)")
    entry, files = installed
    if entry.name == name and os.path.lexists(models_dir / f"{name}.gguf"):
        return f"both {name}.gguf and {name}/ are in the models directory: delete one first"
    if entry.name == name:
        projectors = [child for child in files if gguf.is_projector_name(child)]
        if not [child for child in files if not gguf.is_projector_name(child)]:
            return f"the folder {name}/ in the models directory holds no model for the projector to join"
        if projectors and not allow_overwrite:
            return (f"the model set {name!r} already has a projector ({', '.join(projectors)}); it is replaced only "
                    "when the server runs with --allow-overwrite")
    return None


def key_order(key: str) -> tuple[int, int]:
    """Members in their set's order: shards by number, then the model, then the projector."""
    if key.isdigit():
        return (0, int(key))
    return (1, 0) if key == MODEL else (2, 0)


def composition_problem(size: int, keys: Iterable[str], shard_count: int | None) -> str | None:
    """Why files with these keys can never be a complete set of `size` uploads, or None while they may."""
    keys = set(keys)
    shards = {key for key in keys if key.isdigit()}
    if shards and MODEL in keys:
        return "the set would hold both a split model's shards and a single-file model: llama-server loads one model"
    if shard_count is not None and size not in (shard_count, shard_count + 1):
        return (f"the set is {size} upload(s), but its model is split in {shard_count} shards: a set is the model's "
                "shards and at most one projector")
    if MODEL in keys and size > 2:
        return f"the set is {size} uploads, but a single-file model and a projector make 2"
    if len(keys) > size:
        return f"the set is {size} upload(s), but {len(keys)} different files were sent for it"
    return None


def waiting_for(size: int, keys: Iterable[str], shard_count: int | None) -> str:
    """What a set still needs, in words: 'shard(s) 00002 of 00003', 'its projector', '1 more file'."""
    keys = set(keys)
    parts = []
    model_count = shard_count if shard_count is not None else (1 if MODEL in keys else None)
    if shard_count is not None:
        missing = gguf.missing_shards((int(key) for key in keys if key.isdigit()), shard_count)
        if missing:
            parts.append(f"shard(s) {', '.join(f'{number:05d}' for number in missing)} of {shard_count:05d}")
    elif not any(key.isdigit() or key == MODEL for key in keys) and size > (1 if PROJECTOR in keys else 0):
        parts.append("its model")
    if model_count is not None and size == model_count + 1 and PROJECTOR not in keys:
        parts.append("its projector (mmproj)")
    left = size - len(keys)
    if not parts and left > 0:
        parts.append(f"{left} more file(s)")
    return " and ".join(parts)


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
    """Fails and frees the staged files of sets that stopped growing; returns the expired sets' names.

    The timer is the set's: expire_after since its last file was staged (the members file is rewritten
    each time), and it does not run while any file of the set is still in staging as an upload of its
    own, which its own expiry governs: a slow file does not cost the others their place.
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
            place = member_of(info)
            if place is not None:
                in_progress.add(place.set)
    expired = []
    for name in names:
        prefix = name[:-len(MEMBERS_SUFFIX)]
        if not name.endswith(MEMBERS_SUFFIX) or prefix in in_progress or not _idle(sets_dir, prefix, expire_after, now):
            continue
        held = locks.try_acquire(lock_name(prefix))
        if held is None:
            continue  # a file is being staged right now: the set is not idle
        try:
            # again under the lock: a file may have been staged since the first look
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


def shape(store: FileStore, members: dict[str, str]) -> tuple[int | None, int | None]:
    """(uploads that make the set, its model's shard count) as its staged members' records say."""
    size = shard_count = None
    for upload_id in members.values():
        with contextlib.suppress(errors.StoreError, OSError, ValueError, KeyError, gguf.GGUFError):
            place = member_of(store.load(upload_id))
            if place is not None:
                size = place.size
                shard_count = place.shard.count if place.shard is not None else shard_count
    return size, shard_count


def _expire(store: FileStore, sets_dir: Path, prefix: str, expire_after: float) -> bool:
    members = read_members(sets_dir, prefix)
    size, shard_count = shape(store, members)
    if shard_count is None:  # the members' records are gone: the staged shards' names still say it
        with contextlib.suppress(OSError, gguf.GGUFError):
            for entry in os.listdir(sets_dir / prefix):
                shard = gguf.parse_shard_name(entry)
                shard_count = shard.count if shard is not None else shard_count
        size = size or shard_count
    if not members or size is None:
        return False  # published already (its job records it), or nothing staged to free
    if len(members) >= size:
        return False  # complete: publishing it is its last file's job
    what = "split set" if shard_count == size and PROJECTOR not in members else "model set"
    reason = (f"the {what} {prefix!r} expired: {waiting_for(size, members, shard_count)} did not arrive within "
              f"{expire_after:g}s of the last file staged; upload the whole set again")
    remove_entry(sets_dir / prefix)  # first: a file whose status says failed has its staged bytes freed already
    for upload_id in members.values():
        with contextlib.suppress(errors.StoreError, OSError, ValueError, KeyError):
            if not store.state(upload_id).terminal:
                store.mark_failed(store.load(upload_id), reason)
    members_path(sets_dir, prefix).unlink(missing_ok=True)  # last: it marks the set as still to be freed
    return True
