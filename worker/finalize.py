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
import hashlib
import json
import logging
import os
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
        shard = gguf.parse_shard_name(info.filename)
    except gguf.GGUFError as exc:
        raise Rejected(exc.reason) from None
    if not os.path.lexists(data):
        return _resume_after_move(ctx, info, status, shard)
    # Everything is checked through one descriptor opened without following links, so the file verified,
    # hashed and given its permissions is the very file published, not whatever a name resolves to later
    try:
        fd = open_regular(data, os.O_RDONLY)
    except PlantedLink as exc:
        raise Rejected(exc.strerror) from None
    try:
        facts = _verify(ctx, info, fd)
        if shard is not None:
            _check_shard_keys(shard, facts)
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
    if shard is not None:
        return _stage_shard(ctx, info, shard, data, verified)
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


def _refuse_same_model(ctx: Components, entry: str, folder: bool) -> None:
    """The authoritative check (creation's can be overtaken): no second entry with the same model id."""
    others = same_model_entries(ctx.models_dir, entry)
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
                       shard: gguf.ShardName | None) -> UploadStatus | None:
    """The data left staging before the outcome was recorded: find where it went by its inode."""
    inode = status.publish_inode
    assert info.filename is not None
    if shard is None:
        target = ctx.models_dir / info.filename
        if _has_inode(target, inode):
            return _record_installed(ctx, info, target, info.filename)
        raise Rejected("the upload's data is gone from staging and was not installed")
    published = ctx.models_dir / shard.prefix / info.filename
    if _has_inode(published, inode):
        with _holding_set(ctx, shard.prefix):
            if _read_members(ctx, shard.prefix):
                _record_set_installed(ctx, shard)
            else:  # the set was recorded before the crash, all but this shard's status
                _record_installed(ctx, info, published, shard.prefix, notify=False)
        return ctx.store.read_status(info.id)
    staged = ctx.sets_dir / shard.prefix / info.filename
    if staged.exists():
        return _stage_shard(ctx, info, shard, None)
    raise Rejected("the shard's data is gone from staging and its set was not installed")


# -- split sets ---------------------------------------------------------------------------------


def _members_path(ctx: Components, prefix: str) -> Path:
    return sets.members_path(ctx.sets_dir, prefix)


def _read_members(ctx: Components, prefix: str) -> dict[str, str]:
    return sets.read_members(ctx.sets_dir, prefix)


def _set_lock_name(prefix: str) -> str:
    return sets.lock_name(prefix)  # the server's expiry of waiting sets takes the same lock


@contextlib.contextmanager
def _holding_set(ctx: Components, prefix: str) -> Iterator[None]:
    """The split set's lock; Busy, so the job is retried, when another process keeps it past the wait."""
    with _holding(ctx.locks, _set_lock_name(prefix), 60.0) as held:
        if held is None:
            raise Busy(f"the split set {prefix!r} is being updated by another process")
        yield


def _stage_shard(ctx: Components, info: UploadInfo, shard: gguf.ShardName, data: Path | None,
                 verified: tuple[int, int] | None = None) -> UploadStatus | None:
    """Adds a verified shard to its set in staging; publishes the set when every shard is there."""
    set_dir = ctx.sets_dir / shard.prefix
    with _holding_set(ctx, shard.prefix):
        if (ctx.models_dir / shard.prefix).exists() and not ctx.settings.allow_overwrite:
            raise Rejected(f"a split model named {shard.prefix!r} is already installed; it was not replaced")
        try:  # a link planted as sets/ or sets/<prefix> would take the shards (and then the set) elsewhere
            real_directory(ctx.sets_dir)
            real_directory(set_dir)
        except PlantedLink as exc:
            raise Rejected(f"the split set cannot be staged: {exc.strerror}") from None
        members = _read_members(ctx, shard.prefix)
        previous = members.get(str(shard.number))
        _confirm_locks()
        if data is not None:
            if verified is not None:
                _check_still(data, verified)
            os.replace(data, set_dir / info.filename)  # type: ignore[operator]
            fsync_directory(set_dir)
        members[str(shard.number)] = info.id
        write_atomic(_members_path(ctx, shard.prefix), json.dumps(members).encode(), ctx.store.durable)
        if previous and previous != info.id:
            _fail_quietly(ctx, previous, f"replaced by a newer upload of the same shard ({info.id})")
        present = sorted(int(number) for number in members)
        missing = gguf.missing_shards(present, shard.count)
        set_info = SetProgress(shard.prefix, shard.count, tuple(present), tuple(missing))
        if missing:
            listed = ", ".join(f"{number:05d}" for number in missing)
            log.info("upload=%s shard %d of %d staged; waiting for %s", info.id, shard.number, shard.count, listed)
            detail = f"verified; waiting for shard(s) {listed} of {shard.count:05d}"
            for other in set(members.values()) - {info.id}:  # the shards staged before still wait, for fewer
                with contextlib.suppress(Exception):
                    other_status = ctx.store.read_status(other)
                    if other_status is not None and other_status.waiting_for_set:
                        ctx.store.write_status(other, split_set=set_info, detail=detail)
            return ctx.store.write_status(info.id, State.VERIFYING, waiting_for_set=True, split_set=set_info,
                                          staged=str(set_dir / info.filename), reason=None,  # type: ignore[operator]
                                          detail=detail)
        ctx.store.write_status(info.id, split_set=set_info, waiting_for_set=False)
        _publish_set(ctx, shard, set_dir, members)
    return ctx.store.read_status(info.id)


def _publish_set(ctx: Components, shard: gguf.ShardName, set_dir: Path, members: dict[str, str]) -> None:
    shards = []
    try:
        real_directory(set_dir)
        folder = identity(set_dir)
        for path in sorted(set_dir.iterdir()):
            name = gguf.parse_shard_name(path.name)
            if name is None or name.prefix != shard.prefix:
                raise gguf.GGUFError(f"{path.name} does not belong to the split set {shard.prefix!r}")
            fd = open_regular(path, os.O_RDONLY)  # a shard swapped for a link would be published as one
            try:
                shards.append((name, gguf.verify_file(_fd_path(fd, path))))
            finally:
                os.close(fd)
        gguf.check_split_set(shards)
        with _holding_model_id(ctx, shard.prefix):
            _refuse_same_model(ctx, shard.prefix, folder=True)
            _confirm_locks()
            if identity(set_dir) != folder:
                raise PlantedLink(set_dir, "a folder swapped in after the shards were verified")
            publish(set_dir, ctx.models_dir / shard.prefix, overwrite=ctx.settings.allow_overwrite)
    except (gguf.GGUFError, NameTaken, Rejected, PlantedLink) as exc:
        if isinstance(exc, gguf.GGUFError):
            reason = exc.reason
        elif isinstance(exc, PlantedLink):
            reason = str(exc.strerror)
        elif isinstance(exc, Rejected):
            reason = str(exc)
        elif ctx.settings.allow_overwrite:  # only a filesystem that cannot swap folders refuses then
            reason = f"the installed {shard.prefix!r} could not be replaced: {exc}"
        else:
            reason = f"a model named {shard.prefix!r} is already installed; the split set was not installed"
        for upload_id in members.values():
            _fail_quietly(ctx, upload_id, f"the split set cannot be installed: {reason}")
        remove_entry(set_dir)
        _members_path(ctx, shard.prefix).unlink(missing_ok=True)
        return
    _record_set_installed(ctx, shard)


def _record_set_installed(ctx: Components, shard: gguf.ShardName) -> None:
    """Under the set's lock, once its folder is in the models directory: statuses, catalog, llama-server.

    The staging folder goes before the members file, which marks the set as still to be recorded: after a
    crash between swapping a replaced set out and deleting it, the old shards sit there, and are freed here.
    """
    members = _read_members(ctx, shard.prefix)
    target = ctx.models_dir / shard.prefix
    digests = {}
    for _, upload_id in sorted(members.items(), key=lambda item: int(item[0])):
        with contextlib.suppress(Exception):
            member = ctx.store.load(upload_id)
            status = ctx.store.read_status(upload_id) or UploadStatus()
            digests[member.filename] = status.sha256
            if not status.terminal:
                _record_installed(ctx, member, target / str(member.filename), shard.prefix, notify=False)
    ctx.catalog.write_record(shard.prefix, shard_sha256=digests, installed_at=time.time(),
                             upload_ids=sorted(members.values()))
    outcome = _notify(ctx, shard.prefix)
    for upload_id in members.values():
        with contextlib.suppress(Exception):
            ctx.store.write_status(upload_id, llama_server=outcome)
    remove_entry(ctx.sets_dir / shard.prefix)
    _members_path(ctx, shard.prefix).unlink(missing_ok=True)


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
