"""finalize_upload(upload_id): the one job that turns a finished upload into an installed model.

A plain function, as RQ jobs are: RQ imports it by name in a worker process, where it runs with the components
that process built once at start (server/components.py, given here by worker/main.py through `use`). In embedded
mode the server's finalizer thread calls `run` with the server's own components.
 Idempotent: it can be killed at any line and run again, and it ends
with the upload `installed` exactly once or `failed` with a reason a person understands. The steps:
lock, fsync, size, GGUF structure, sha256, permissions, publish (no clobber), record, tell llama-server.
Split shards are staged one by one and published together as one directory when the set is complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat as stat_module
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modeldrop.server import gguf
from modeldrop.server.admission import describe_same_model, model_id, same_model_entries
from modeldrop.server.catalog import public_facts, sha256_of
from modeldrop.server.components import Components
from modeldrop.server.locks import LOCK_TTL_MS, RENEW_EVERY, Held, LockSpace
from modeldrop.server.store import sets
from modeldrop.server.store.filestore import (PlantedLink, fsync_directory, open_regular, real_directory, remove_entry,
                                              write_atomic)
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import SetProgress, State, UploadStatus
from modeldrop.worker.publish import NameTaken, identity, notify_llama_server, publish, same_file, set_permissions

log = logging.getLogger("modeldrop.finalize")

# the RQ queue finalize jobs go to: the worker listens on it, the server (server/finalizer.py) enqueues on it
QUEUE_NAME = "modeldrop-finalize"
MAX_ATTEMPTS = 5
LOCK_WAIT = 5.0
PROGRESS_EVERY = 2.0


class Busy(Exception):
    """Another process is finalizing this upload right now; RQ retries later."""


class LockLost(Busy):
    """The job's lock lapsed or another process took it: the job stops before it publishes anything.

    Another holder may be running the same job, so nothing more is written for this one; RQ's retry (or the
    server's requeue loop) runs it again, and the job's idempotence does the rest.
    """


def finalize_lock_name(upload_id: str) -> str:
    """The lock a job holds while it works on an upload; the server's requeue loop tries it to see if one does."""
    return f"finalize-{upload_id}"


_components: Components | None = None  # this process's, for the job RQ calls by name


def use(components: Components | None) -> None:
    """Gives the RQ job this process's components: once, at the start of a worker process (worker/main.py)."""
    global _components
    _components = components


def finalize_upload(upload_id: str) -> dict[str, Any]:
    """The RQ job. Returns the outcome (or current) status record, in plain JSON types since RQ keeps it in Redis."""
    if _components is None:
        raise RuntimeError("this process has no components for the job: worker.finalize.use(build(settings)) was "
                           "not called at its start")
    status = run(_components, upload_id)
    return {} if status is None else status.to_record()


def run(ctx: Components, upload_id: str) -> UploadStatus | None:
    """The job itself, with the components it works with: the RQ job's, or the embedded finalizer's (the server's)."""
    with _holding(ctx.locks, finalize_lock_name(upload_id), LOCK_WAIT) as held:
        if held is None:
            raise Busy(f"upload {upload_id} is being finalized by another process")
        return _finalize(ctx, upload_id)


class _Guard:
    """One held lock of this job: renewed in the background, and known lost as soon as it may be.

    With Redis the lock is a key with a TTL; a worker that stalls (swap, a hung disk) past it, or a renewal
    that finds the key gone or someone else's, means a second worker may be running the same job. The
    job then stops at its next check: during the hash, and above all right before anything is published.
    """

    def __init__(self, held: Held, name: str) -> None:
        self.held = held
        self.name = name
        self.lost: str | None = None
        self.renewed_at = time.monotonic()

    def renew(self) -> None:
        """Called every RENEW_EVERY seconds by the renewer thread."""
        try:
            renewed = self.held.renew()
        except Exception as exc:  # a Redis blip: the lock is still ours until its TTL may have run out
            if time.monotonic() - self.renewed_at >= LOCK_TTL_MS / 1000 - RENEW_EVERY:
                self.lost = f"the lock {self.name} could not be renewed before it expired: {exc}"
            return
        if renewed:
            self.renewed_at = time.monotonic()
        else:
            self.lost = f"the lock {self.name} expired or was taken by another process"

    def check(self) -> None:
        if self.lost is not None:
            raise LockLost(self.lost)

    def confirm(self) -> None:
        """Before a step that cannot be undone: renews now, so the lock is ours for a whole TTL from here."""
        self.check()
        try:
            renewed = self.held.renew()
        except Exception as exc:
            raise LockLost(f"the lock {self.name} could not be confirmed: {exc}") from None
        if not renewed:
            self.lost = f"the lock {self.name} expired or was taken by another process"
            raise LockLost(self.lost)
        self.renewed_at = time.monotonic()


_guards = threading.local()  # the locks the job running in this thread holds, outermost first


def _held_guards() -> list[_Guard]:
    if not hasattr(_guards, "stack"):
        _guards.stack = []
    return _guards.stack  # type: ignore[no-any-return]


def _check_locks() -> None:
    """Cheap (no Redis round trip): raises LockLost if the renewer found any of the job's locks lost."""
    for guard in _held_guards():
        guard.check()


def _confirm_locks() -> None:
    """Right before publishing (or moving data where another job would publish it): every lock still ours."""
    for guard in _held_guards():
        guard.confirm()


@contextlib.contextmanager
def _holding(locks: LockSpace, name: str, wait: float) -> Iterator[Held | None]:
    held = locks.acquire_blocking(name, wait)
    if held is None:
        yield None
        return
    guard = _Guard(held, name)
    stop = threading.Event()

    def renew() -> None:
        while guard.lost is None and not stop.wait(RENEW_EVERY):
            guard.renew()
        if guard.lost is not None:
            log.warning("%s; the job stops at its next check", guard.lost)

    renewer = threading.Thread(target=renew, name=f"renew-{name}", daemon=True)
    renewer.start()
    stack = _held_guards()
    stack.append(guard)
    try:
        yield held
    finally:
        stack.remove(guard)
        stop.set()
        held.release()  # a Redis lock is only deleted if it still holds this job's token


class Rejected(Exception):
    """The upload cannot become a model; the message is the reason shown to the user."""


def _finalize(ctx: Components, upload_id: str) -> UploadStatus | None:
    store = ctx.store
    info = store.load(upload_id)
    status = store.read_status(upload_id)
    if status is not None and status.terminal:
        return status
    data = store.paths(upload_id).data
    if os.path.islink(data):  # planted in place of the data: nothing is verified or published through it
        return _fail(ctx, info, str(PlantedLink(data).strerror))
    if not info.is_complete and data.exists():
        log.warning("upload=%s is not complete (%s of %s bytes); nothing to finalize", upload_id, info.offset,
                    info.length)
        return status
    if status is None or status.state is State.RECEIVING:
        status = store.mark_queued(info)  # complete, but its record was lost with a crash: it starts as queued
    attempts = status.attempts + 1
    if attempts > MAX_ATTEMPTS:
        return _fail(ctx, info, f"installing failed {MAX_ATTEMPTS} times; last error: {status.last_error}")
    started = status.started_at or time.time()
    status = store.write_status(upload_id, State.VERIFYING, attempts=attempts, started_at=started, progress=0.0)
    log.info("verifying upload=%s filename=%s attempt=%d", upload_id, info.filename, attempts)
    try:
        return _install(ctx, info, status)
    except Rejected as exc:
        _confirm_locks()  # a job that lost its lock records nothing: another one owns the outcome now
        return _fail(ctx, info, str(exc))
    except LockLost:
        raise
    except Exception as exc:
        store.write_status(upload_id, last_error=f"{type(exc).__name__}: {exc}")
        raise


def _install(ctx: Components, info: UploadInfo, status: UploadStatus) -> UploadStatus | None:
    assert info.filename is not None
    data = ctx.store.paths(info.id).data
    try:
        place = sets.member_of(info)
    except gguf.GGUFError as exc:
        raise Rejected(exc.reason) from None
    if not os.path.lexists(data):
        return _resume_after_move(ctx, info, status, place)
    # Everything is checked through one descriptor opened without following links, so the file verified,
    # hashed and given its permissions is the very file published, not whatever a name resolves to later
    try:
        fd = open_regular(data, os.O_RDONLY)
    except PlantedLink as exc:
        raise Rejected(exc.strerror) from None
    try:
        facts = _verify(ctx, info, fd)
        _check_part(info.filename, place, facts)
        digest = _sha256(ctx, info, _fd_path(fd, data))
        _check_locks()
        if info.sha256_expected and info.sha256_expected != digest:
            raise Rejected(f"sha256 mismatch: the file's sha256 is {digest} but {info.sha256_expected} was expected; "
                           "the upload is corrupt or the expected digest is for another file")
        settings = ctx.settings
        set_permissions(fd, settings.file_mode, settings.file_uid, settings.file_gid)
        stat = os.fstat(fd)
        verified = (stat.st_dev, stat.st_ino)
    finally:
        os.close(fd)
    ctx.store.write_status(info.id, sha256=digest, gguf=public_facts(facts), progress=1.0, publish_inode=verified)
    if place is not None:
        return _stage_member(ctx, info, place, data, verified)
    target = ctx.models_dir / info.filename
    with _holding_model_id(ctx, info.filename):
        _refuse_same_model(ctx, info.filename, folder=False)
        _confirm_locks()
        _check_still(data, verified)
        try:
            publish(data, target, overwrite=settings.allow_overwrite)
        except NameTaken:
            if not same_file(data, target):  # a link made before a crash is ours; anything else is not
                raise Rejected(f"a model named {info.filename!r} is already installed; it was not replaced") from None
            data.unlink()
        except PlantedLink as exc:
            raise Rejected(exc.strerror) from None
        _check_published(target, verified, data)
    return _record_installed(ctx, info, target, info.filename)


def _fd_path(fd: int, fallback: Path) -> Path:
    """A name that opens exactly the file behind fd (Linux's /proc), for readers that take a path."""
    proc = Path(f"/proc/self/fd/{fd}")
    return proc if proc.exists() else fallback


def _check_still(path: Path, verified: tuple[int, int]) -> None:
    """Right before a rename: the name still holds the verified file, not a link or file swapped in since."""
    if identity(path) != verified:
        raise Rejected(f"{path.name} in staging was replaced after it was verified (by something other than this "
                       "server); it was not installed")


def _check_published(target: Path, verified: tuple[int, int], staging: Path) -> None:
    """After the rename: what landed in models/ is the verified file; a swap that won the race between the
    check above and the rename is taken back out at once."""
    if identity(target) == verified:
        return
    quarantine = staging.with_name(f"{staging.name}.replaced")
    with contextlib.suppress(OSError):
        os.rename(target, quarantine)
        remove_entry(quarantine)
    raise Rejected(f"{staging.name} in staging was replaced while it was being installed; it was not installed")


def model_lock_name(entry: str) -> str:
    """The lock every publisher of a llama-server model id holds: a finalize job, and an install by link
    (server/dedupe.py)."""
    return "model-" + hashlib.sha256(model_id(entry).encode()).hexdigest()[:32]


@contextlib.contextmanager
def _holding_model_id(ctx: Components, entry: str) -> Iterator[None]:
    """One publisher at a time per llama-server model id, so the check below and the rename are one step for
    modeldrop: a file `X.gguf` and a split set `X/` finishing together cannot both get in."""
    with _holding(ctx.locks, model_lock_name(entry), 60.0) as held:
        if held is None:
            raise Busy(f"another install of model {model_id(entry)!r} is under way")
        yield


def _refuse_same_model(ctx: Components, entry: str, folder: bool, adopted: Path | None = None) -> None:
    """The authoritative check (creation's can be overtaken): no second entry with the same model id (but the
    installed `X.gguf` a projector's folder `X/` takes in, which goes once the folder is in)."""
    others = [other for other in same_model_entries(ctx.models_dir, entry)
              if adopted is None or other != adopted.name]
    if others:
        raise Rejected(f"{describe_same_model(entry, folder, others)}; it was not installed (a folder and a file "
                       "cannot replace each other in one step: delete the installed one first)")


def _verify(ctx: Components, info: UploadInfo, fd: int) -> gguf.GGUFFacts:
    if ctx.store.durable:
        os.fsync(fd)
    size = os.fstat(fd).st_size
    if size != info.length:
        raise Rejected(f"size mismatch: {size} bytes were stored but Upload-Length was {info.length}")
    try:
        facts = gguf.verify_file(_fd_path(fd, ctx.store.paths(info.id).data), size)
    except gguf.GGUFError as exc:
        raise Rejected(exc.reason) from None
    if facts.architecture is None and facts.split_no in (None, 0):
        raise Rejected("the GGUF header has no general.architecture: llama-server cannot load it")
    return facts


def _check_part(filename: str, place: sets.Member | None, facts: gguf.GGUFFacts) -> None:
    """The header says what the name says: a shard is that shard, a projector is a projector, a model is not one."""
    if place is not None and place.shard is not None:
        _check_shard_keys(place.shard, facts)
    if place is not None and place.is_projector:
        if not facts.is_projector:
            raise Rejected(f"{filename} is named as a projector (llama-server takes a file whose name holds "
                           f"{gguf.PROJECTOR_NAME_MARK!r} as the projector) but its header says it is a "
                           f"{facts.architecture or 'headerless'} model, not a multimodal projector "
                           "(general.architecture 'clip' or general.type 'mmproj')")
    elif facts.is_projector:
        where = ("it is installed in its model's folder: upload it named mmproj-….gguf, with `set` metadata"
                 if place is None else "its name lacks 'mmproj', so llama-server would load it as the model: name "
                 "it mmproj-….gguf")
        raise Rejected(f"{filename} is a multimodal projector (general.architecture {facts.architecture!r}, "
                       f"general.type {facts.general_type!r}), not a model llama-server runs on its own; {where}")


def _check_shard_keys(shard: gguf.ShardName, facts: gguf.GGUFFacts) -> None:
    if shard.count == 1 and facts.split_count is None:
        return
    if facts.split_count != shard.count or facts.split_no != shard.number - 1:
        raise Rejected(f"the file is named as shard {shard.number} of {shard.count}, but its header says split.no "
                       f"{facts.split_no} of split.count {facts.split_count}")


def _sha256(ctx: Components, info: UploadInfo, data: Path) -> str:
    """From the checkpoint kept while the bytes arrived, or one sequential read as the fallback."""
    known = ctx.store.digest_if_known(info)
    if known is not None:
        return known
    last_report = time.monotonic()

    def report(done: int) -> None:
        nonlocal last_report
        _check_locks()  # a lost lock stops a long hash here, not minutes later
        if time.monotonic() - last_report > PROGRESS_EVERY and info.length:
            last_report = time.monotonic()
            ctx.store.write_status(info.id, progress=round(done / info.length, 4))

    return sha256_of(data, report)


def _has_inode(path: Path, inode: tuple[int, ...] | None) -> bool:
    """Whether path is the very file recorded before the move (same device and inode)."""
    return bool(inode) and identity(path) == inode


def _resume_after_move(ctx: Components, info: UploadInfo, status: UploadStatus,
                       place: sets.Member | None) -> UploadStatus | None:
    """The data left staging before the outcome was recorded: find where it went by its inode."""
    inode = status.publish_inode
    assert info.filename is not None
    if place is None:
        target = ctx.models_dir / info.filename
        if _has_inode(target, inode):
            return _record_installed(ctx, info, target, info.filename)
        raise Rejected("the upload's data is gone from staging and was not installed")
    published = ctx.models_dir / place.set / info.filename
    if _has_inode(published, inode):
        with _holding_set(ctx, place.set):
            if _read_members(ctx, place.set):
                _record_set_installed(ctx, place.set)
            else:  # the set was recorded before the crash, all but this file's status
                _record_installed(ctx, info, published, place.set, notify=False)
        return ctx.store.read_status(info.id)
    staged = ctx.sets_dir / place.set / info.filename
    if staged.exists():
        return _stage_member(ctx, info, place, None)
    raise Rejected("the file's data is gone from staging and its set was not installed")


# -- model sets: split shards, a model and its projector ------------------------------------------------------


def _members_path(ctx: Components, name: str) -> Path:
    return sets.members_path(ctx.sets_dir, name)


def _read_members(ctx: Components, name: str) -> dict[str, str]:
    return sets.read_members(ctx.sets_dir, name)


def _set_lock_name(name: str) -> str:
    return sets.lock_name(name)  # the server's expiry of waiting sets takes the same lock


@contextlib.contextmanager
def _holding_set(ctx: Components, name: str) -> Iterator[None]:
    """The set's lock; Busy, so the job is retried, when another process keeps it past the wait."""
    with _holding(ctx.locks, _set_lock_name(name), 60.0) as held:
        if held is None:
            raise Busy(f"the model set {name!r} is being updated by another process")
        yield


def _what(place: sets.Member) -> str:
    return "model set" if place.named else "split set"


def _stage_member(ctx: Components, info: UploadInfo, place: sets.Member, data: Path | None,
                  verified: tuple[int, int] | None = None) -> UploadStatus | None:
    """Adds a verified file to its set in staging; publishes the set when every file is there."""
    name = place.set
    set_dir = ctx.sets_dir / name
    with _holding_set(ctx, name):
        if place.adopts_installed:
            problem = sets.adoption_problem(ctx.models_dir, name, ctx.settings.allow_overwrite)
            if problem is not None:
                raise Rejected(problem)
        elif (ctx.models_dir / name).exists() and not ctx.settings.allow_overwrite:
            kind = "model set" if place.named else "split model"
            raise Rejected(f"a {kind} named {name!r} is already installed; it was not replaced")
        try:  # a link planted as sets/ or sets/<name> would take the files (and then the set) elsewhere
            real_directory(ctx.sets_dir)
            real_directory(set_dir)
        except PlantedLink as exc:
            raise Rejected(f"the {_what(place)} cannot be staged: {exc.strerror}") from None
        members = _read_members(ctx, name)
        previous = members.get(place.key)
        shard_count = _check_shape(ctx, info, place, members)
        _confirm_locks()
        if data is not None:
            if verified is not None:
                _check_still(data, verified)
            os.replace(data, set_dir / info.filename)  # type: ignore[operator]
            fsync_directory(set_dir)
        members[place.key] = info.id
        write_atomic(_members_path(ctx, name), json.dumps(members).encode(), ctx.store.durable)
        if previous and previous != info.id:
            _fail_quietly(ctx, previous, f"replaced by a newer upload of the same file of its set ({info.id})")
        progress = _progress(ctx, place, members, shard_count)
        if len(members) < place.size:
            waiting = sets.waiting_for(place.size, members, shard_count)
            log.info("upload=%s staged in set %s; waiting for %s", info.id, name, waiting)
            detail = f"verified; waiting for {waiting}"
            for other in set(members.values()) - {info.id}:  # the files staged before still wait, for fewer
                with contextlib.suppress(Exception):
                    other_status = ctx.store.read_status(other)
                    if other_status is not None and other_status.waiting_for_set:
                        ctx.store.write_status(other, split_set=progress, detail=detail)
            return ctx.store.write_status(info.id, State.VERIFYING, waiting_for_set=True, split_set=progress,
                                          staged=str(set_dir / info.filename), reason=None,  # type: ignore[operator]
                                          detail=detail)
        ctx.store.write_status(info.id, split_set=progress, waiting_for_set=False)
        _publish_set(ctx, name, set_dir, members)
    return ctx.store.read_status(info.id)


def _check_shape(ctx: Components, info: UploadInfo, place: sets.Member, members: dict[str, str]) -> int | None:
    """The file fits the set its members staged before make: the same size and split; returns the shard count."""
    others = {key: upload_id for key, upload_id in members.items() if key != place.key and upload_id != info.id}
    size, shard_count = sets.shape(ctx.store, others)
    if size is not None and size != place.size:
        raise Rejected(f"this file is sent as one of {place.size} for the {_what(place)} {place.set!r}, but the files "
                       f"staged for it before are {size}: send every file of a set with the same set_size")
    if place.shard is not None:
        if shard_count is not None and shard_count != place.shard.count:
            raise Rejected(f"this shard is one of {place.shard.count}, but the set {place.set!r} staged before holds "
                           f"shards of {shard_count}")
        shard_count = place.shard.count
    problem = sets.composition_problem(place.size, set(others) | {place.key}, shard_count)
    if problem is not None:
        raise Rejected(problem)
    return shard_count


def _progress(ctx: Components, place: sets.Member, members: dict[str, str], shard_count: int | None) -> SetProgress:
    present = sorted(int(key) for key in members if key.isdigit())
    files = []
    for key in sorted(members, key=sets.key_order):
        with contextlib.suppress(Exception):
            files.append(str(ctx.store.load(members[key]).filename))
    return SetProgress(place.set, shard_count or 0, tuple(present),
                       tuple(gguf.missing_shards(present, shard_count) if shard_count else ()),
                       size=place.size if place.named else None, files=tuple(files) if place.named else ())


def _member_files(ctx: Components, members: dict[str, str]) -> dict[str, str]:
    """file name -> upload id of the set's staged members; Rejected when a member's record is gone."""
    files = {}
    for upload_id in members.values():
        try:
            filename = ctx.store.load(upload_id).filename
        except Exception:
            raise Rejected(f"the record of upload {upload_id}, a file of the set, is gone") from None
        files[str(filename)] = upload_id
    return files


def _publish_set(ctx: Components, name: str, set_dir: Path, members: dict[str, str]) -> None:
    adopted: Path | None = None
    try:
        real_directory(set_dir)
        folder = identity(set_dir)
        expected = _member_files(ctx, members)
        with _holding_model_id(ctx, name):
            for stray in set(os.listdir(set_dir)) - set(expected):  # a replaced file, links of an adoption cut short
                remove_entry(set_dir / stray)
            if all(key == sets.PROJECTOR for key in members):  # a projector alone: the installed model joins it
                adopted = _adopt_installed(ctx, name, set_dir)
            files = []
            for path in sorted(set_dir.iterdir(), key=lambda path: path.name):
                if not path.name.endswith(".gguf"):
                    continue  # a file the installed folder held beside its model, taken along
                fd = open_regular(path, os.O_RDONLY)  # a file swapped for a link would be published as one
                try:
                    files.append((path.name, gguf.verify_file(_fd_path(fd, path))))
                finally:
                    os.close(fd)
            gguf.check_model_set(files)
            _refuse_same_model(ctx, name, folder=True, adopted=adopted)
            _confirm_locks()
            if identity(set_dir) != folder:
                raise PlantedLink(set_dir, "a folder swapped in after the files were verified")
            # a folder taken in whole is swapped with the installed one, as a replacement is
            swap = ctx.settings.allow_overwrite or (adopted is not None and adopted.name == name)
            publish(set_dir, ctx.models_dir / name, overwrite=swap)
    except (gguf.GGUFError, NameTaken, Rejected, PlantedLink) as exc:
        if isinstance(exc, gguf.GGUFError):
            reason = exc.reason
        elif isinstance(exc, PlantedLink):
            reason = str(exc.strerror)
        elif isinstance(exc, Rejected):
            reason = str(exc)
        elif ctx.settings.allow_overwrite:  # only a filesystem that cannot swap folders refuses then
            reason = f"the installed {name!r} could not be replaced: {exc}"
        else:
            reason = f"a model named {name!r} is already installed; the set was not installed"
        kind = "split set" if all(key.isdigit() for key in members) else "model set"
        for upload_id in members.values():
            _fail_quietly(ctx, upload_id, f"the {kind} cannot be installed: {reason}")
        remove_entry(set_dir)
        _members_path(ctx, name).unlink(missing_ok=True)
        return
    _record_set_installed(ctx, name)


def _adopt_installed(ctx: Components, name: str, set_dir: Path) -> Path:
    """Hard links of the installed model's files (`NAME.gguf`, or the folder `NAME/` less its projector) beside
    the projector staged alone, so the folder published holds both; the installed model is not moved.

    What llama-server's scan sees: `NAME.gguf` alone (the model without projector), then `NAME/` appears by one
    rename holding the model (the same inode) and the projector, beside `NAME.gguf` until _finish_adoption
    unlinks it: both entries are whole models with the same id, so whichever the scan keeps is loadable. A
    folder is swapped with the installed one in one step (RENAME_EXCHANGE), as a replaced set is.
    """
    problem = sets.adoption_problem(ctx.models_dir, name, ctx.settings.allow_overwrite)
    installed = sets.installed_model(ctx.models_dir, name)
    if problem is not None or installed is None:
        raise Rejected(problem or f"no model named {name!r} is installed")
    entry, _ = installed
    if entry.name != name:
        sources = [entry]
    else:
        sources = []
        for child in sorted(os.listdir(entry)):
            mode = os.lstat(entry / child).st_mode
            if not stat_module.S_ISREG(mode):
                raise Rejected(f"{name}/{child} in the models directory is not a regular file: the folder cannot be "
                               "taken into the new set (move it out first)")
            if not (child.endswith(".gguf") and gguf.is_projector_name(child)):  # the projector is the new one
                sources.append(entry / child)
    for source in sources:
        try:
            os.link(source, set_dir / source.name, follow_symlinks=False)  # a link itself, never what it points to
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES, errno.EMLINK, errno.EXDEV):
                raise
            raise Rejected(f"the installed {source.name} could not be hard-linked into the model's new folder "
                           f"({exc.strerror}; the kernel's fs.protected_hardlinks refuses links to another user's "
                           "file, e.g. with --file-uid): upload the model together with its projector instead") \
                from None
    fsync_directory(set_dir)
    return entry


def _finish_adoption(ctx: Components, name: str) -> dict[str, Any]:
    """Once `NAME/` is published holding the hard link of `NAME.gguf`, the file goes: one model id, one entry.
    Returns the file's catalog record (its sha256 is the folder's model's); {} when no file was adopted."""
    single = ctx.models_dir / f"{name}.gguf"
    inside = ctx.models_dir / name / single.name
    if identity(single) is None or identity(single) != identity(inside):
        return {}
    record = ctx.catalog.read_record(single.name)
    stat = os.lstat(inside)
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        record.pop("sha256", None)  # changed on disk since it was recorded
    os.unlink(single)
    fsync_directory(ctx.models_dir)
    ctx.catalog.remove_record(single.name)
    log.info("the model %s joined its projector in %s/", single.name, name)
    return record


def _record_set_installed(ctx: Components, name: str) -> None:
    """Under the set's lock, once its folder is in the models directory: statuses, catalog, llama-server.

    The staging folder goes before the members file, which marks the set as still to be recorded: after a
    crash between swapping a replaced set out and deleting it, the old files sit there, and are freed here.
    """
    members = _read_members(ctx, name)
    target = ctx.models_dir / name
    adopted = _finish_adoption(ctx, name)
    digests: dict[str, str | None] = {}
    upload_ids = sorted(members.values())
    if all(key == sets.PROJECTOR for key in members):  # the model's files joined from the installed model
        previous = ctx.catalog.read_record(name).get("shard_sha256") or {}
        with contextlib.suppress(OSError):
            for child in sorted(os.listdir(target)):
                if child.endswith(".gguf") and not gguf.is_projector_name(child):
                    digests[child] = adopted.get("sha256") if child == f"{name}.gguf" else previous.get(child)
        if adopted.get("upload_id"):
            upload_ids = sorted({*upload_ids, str(adopted["upload_id"])})
    for _, upload_id in sorted(members.items(), key=lambda item: sets.key_order(item[0])):
        with contextlib.suppress(Exception):
            member = ctx.store.load(upload_id)
            status = ctx.store.read_status(upload_id) or UploadStatus()
            digests[str(member.filename)] = status.sha256
            if not status.terminal:
                _record_installed(ctx, member, target / str(member.filename), name, notify=False)
    ctx.catalog.write_record(name, shard_sha256=digests, installed_at=time.time(), upload_ids=upload_ids)
    outcome = _notify(ctx, name)
    for upload_id in members.values():
        with contextlib.suppress(Exception):
            ctx.store.write_status(upload_id, llama_server=outcome)
    remove_entry(ctx.sets_dir / name)
    _members_path(ctx, name).unlink(missing_ok=True)


# -- outcomes -------------------------------------------------------------------------------------


def _record_installed(ctx: Components, info: UploadInfo, target: Path, entry: str,
                      notify: bool = True) -> UploadStatus | None:
    status = ctx.store.read_status(info.id) or UploadStatus()
    now = time.time()
    stat = os.lstat(target)
    model_id = _model_id(entry)
    ctx.store.write_status(
        info.id, State.INSTALLED, reason=None, progress=1.0, final_name=str(target.relative_to(ctx.models_dir)),
        model=model_id, installed_at=now, duration=round(now - (status.started_at or now), 3),
        waiting_for_set=False, offset=info.length,
    )
    ctx.store.remove_data(info.id)
    if entry == target.name:
        ctx.catalog.write_record(entry, sha256=status.sha256, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                 upload_id=info.id, installed_at=now)
    for part in info.parts:  # a concatenation's partials are no longer needed once the final is installed
        with contextlib.suppress(Exception):
            ctx.store.terminate(part, "this partial upload was concatenated and installed")
    log.info("installed upload=%s as %s", info.id, target)
    if notify:
        outcome = _notify(ctx, entry)
        ctx.store.write_status(info.id, llama_server=outcome)
    return ctx.store.read_status(info.id)


def _notify(ctx: Components, entry: str) -> dict[str, Any] | None:
    if not ctx.settings.llama_server_url:
        return None
    outcome = notify_llama_server(ctx.settings.llama_server_url, ctx.settings.llama_api_key, _model_id(entry))
    ctx.catalog.write_record(entry, llama_server=outcome)
    if outcome.get("error"):
        log.warning("llama-server after installing %s: %s", entry, outcome["error"])
    return outcome


def _model_id(entry: str) -> str:
    return model_id(entry)


def _fail(ctx: Components, info: UploadInfo, reason: str) -> UploadStatus:
    status = ctx.store.read_status(info.id) or UploadStatus()
    now = time.time()
    log.info("failed upload=%s filename=%s: %s", info.id, info.filename, reason)
    return ctx.store.mark_failed(info, reason, duration=round(now - (status.started_at or now), 3))


def _fail_quietly(ctx: Components, upload_id: str, reason: str) -> None:
    with contextlib.suppress(Exception):
        info = ctx.store.load(upload_id)
        if not ctx.store.state(upload_id).terminal:
            _fail(ctx, info, reason)
