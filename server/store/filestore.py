"""The staging store: one data file and a few small records per upload, on the models filesystem.

Layout under `<staging>/uploads/`, per upload id:
  <id>.bin      the bytes received; its length IS the offset (tusd's filestore rule)
  <id>.info     UploadInfo as JSON, written atomically (temp file, fsync, rename)
  <id>.status   finalize status (lifecycle.UploadStatus) as JSON, written atomically; none while receiving
  <id>.sha256   checkpoint of the running sha256 at a durable offset (8-byte offset + OpenSSL state)
  <id>.pending  start offset of a PATCH that carries Upload-Checksum, so a crash can roll it back
  <id>.gone     tombstone of a terminated or expired upload, so it answers 410 rather than 404
Every function here is synchronous and does plain file I/O: the HTTP layer runs them in threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import secrets
import shutil
import stat as stat_module
import struct
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Unpack

from modeldrop.server.store import errors
from modeldrop.server.libc import libc
from modeldrop.server.store import digest
from modeldrop.server.store.info import UPLOAD_ID, UploadInfo
from modeldrop.server.store.lifecycle import State, StatusChanges, UploadStatus, advance

_CHECKPOINT = struct.Struct("<Q")
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_KICK = 8 * 1024 * 1024  # start writeback every 8 MiB so a sync (or a PATCH's end) has little to wait for
_MAX_TAIL_REHASH = 1024 * 1024 * 1024  # beyond this, a lost checkpoint is left to the finalizer's full read
_READ_BLOCK = 8 * 1024 * 1024
# spliced bytes are hashed from the page cache in steps of this size; a request's answer waits for the last
# one (measured with 64 MiB PATCHes: 7-8 ms of each request's end at 8 MiB, 2-4 ms at 2 MiB)
_HASH_STEP = 2 * 1024 * 1024
UNSTARTED_GRACE = 600.0  # seconds an upload with no bytes yet keeps its disk reservation

libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Replaces path with data so a reader (or a crash) sees the old content or the new, never a mix."""
    temporary = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        # on a full disk a leftover temp file would keep it full until the next restart
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        fsync_directory(path.parent)


class PlantedLink(OSError):
    """A symbolic link (or another non-regular entry) where the server keeps only entries it made itself.

    Staging holds only what the server created, so such an entry was planted by someone else: nothing is
    read, written, moved or published through it.
    """

    def __init__(self, path: Path | str, what: str = "a symbolic link") -> None:
        super().__init__(errno.ELOOP, f"{Path(path).name} in staging is {what} the server did not create; "
                                      "nothing is read or written through it", str(path))


def open_nofollow(path: Path | str, flags: int, mode: int = 0o644) -> int:
    """os.open that never resolves a link in the last component of path (raises PlantedLink instead)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PlantedLink(path) from None
        raise


def open_regular(path: Path | str, flags: int) -> int:
    """open_nofollow of a file that must be a regular file: a FIFO or device there is planted too."""
    fd = open_nofollow(path, flags | os.O_NONBLOCK)  # a planted FIFO must not hang the open
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise PlantedLink(path, "not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_nofollow(path: Path | str) -> bytes:
    """A small record's bytes, never read through a link (FileNotFoundError / PlantedLink otherwise)."""
    fd = open_regular(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def make_directories(path: Path) -> None:
    """mkdir -p whose new folders survive a power cut: the parent of each folder it created is fsynced."""
    missing, probe = [], path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        fsync_directory(created.parent)


def real_directory(path: Path) -> Path:
    """Creates path if needed and checks it is a directory itself, not a link to one planted in its place."""
    make_directories(path)
    if not stat_module.S_ISDIR(os.lstat(path).st_mode):
        raise PlantedLink(path, "a symbolic link to a folder")
    return path


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_entry(path: Path) -> None:
    """Frees an entry already taken out of the models directory: a file, a link, or a split set's folder.

    Best effort for a folder: what cannot be deleted only costs space, it is no longer visible to anyone.
    """
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class UploadPaths:
    data: Path
    info: Path
    status: Path
    checkpoint: Path
    pending: Path
    gone: Path


@dataclasses.dataclass
class ReconcileReport:
    removed_orphans: list[str] = dataclasses.field(default_factory=list)
    rolled_back: list[str] = dataclasses.field(default_factory=list)
    unfinished: list[str] = dataclasses.field(default_factory=list)
    to_finalize: list[str] = dataclasses.field(default_factory=list)
    to_assemble: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.unfinished)} unfinished uploads, {len(self.to_finalize)} to finalize, "
                f"{len(self.to_assemble)} to assemble, {len(self.removed_orphans)} orphans removed, "
                f"{len(self.rolled_back)} interrupted checksum requests rolled back")


class FileStore:
    def __init__(self, staging_dir: Path, durable: bool = True) -> None:
        self.staging_dir = Path(staging_dir)
        self.uploads_dir = self.staging_dir / "uploads"
        self.durable = durable
        # What a request's answer need not wait for, done in order: sha256 checkpoints of unfinished uploads
        # (creating and renaming a file can wait for the journal to commit the upload's own data: 3-160 ms
        # of a 64 MiB PATCH, measured) and, with --no-fsync, letting go of written pages
        self.background = ThreadPoolExecutor(1, thread_name_prefix="modeldrop-background")
        # the running sha256 of the uploads this process wrote last, (offset, state), so that the next
        # request resumes it without waiting for its checkpoint to reach the disk
        self.running_hashes: dict[str, tuple[int, bytes]] = {}

    def prepare(self) -> None:
        real_directory(self.uploads_dir)

    # -- naming ---------------------------------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    def paths(self, upload_id: str) -> UploadPaths:
        if not UPLOAD_ID.match(upload_id):
            # ids come from URLs: anything else could name a path outside the store
            raise errors.UploadNotFound()
        base = self.uploads_dir / upload_id
        return UploadPaths(*(base.with_name(f"{upload_id}.{suffix}") for suffix in
                             ("bin", "info", "status", "sha256", "pending", "gone")))

    def list_ids(self) -> list[str]:
        try:
            names = os.listdir(self.uploads_dir)
        except FileNotFoundError:
            return []
        return sorted({name[:-5] for name in names if name.endswith(".info") and UPLOAD_ID.match(name[:-5])})

    # -- records --------------------------------------------------------------------------------

    def create(self, info: UploadInfo) -> UploadInfo:
        """The data file first, the info record last: an upload exists once its record does."""
        paths = self.paths(info.id)
        fd = open_nofollow(paths.data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        write_atomic(paths.info, info.to_json().encode(), self.durable)
        return self.load(info.id)

    def load(self, upload_id: str) -> UploadInfo:
        paths = self.paths(upload_id)
        try:
            info = UploadInfo.from_json(read_nofollow(paths.info))
        except FileNotFoundError:
            if paths.gone.exists():
                raise errors.UploadGone(self._gone_reason(paths)) from None
            raise errors.UploadNotFound() from None
        except PlantedLink as exc:
            raise errors.PlantedLinkRefused(exc.strerror) from None
        try:
            stat = os.lstat(paths.data)
            if not stat_module.S_ISREG(stat.st_mode):
                # a link planted in place of the data: its target's bytes are not this upload's (a PATCH
                # there is refused when it opens the file)
                return dataclasses.replace(info, offset=0, last_write_at=info.created_at)
            return dataclasses.replace(info, offset=stat.st_size, last_write_at=stat.st_mtime)
        except FileNotFoundError:
            # installed (data moved into the models directory), a verified shard staged in its split set
            # until the other shards arrive, or failed and cleaned: the status, written once the upload
            # was complete, knows the offset
            status = self.read_status(upload_id) or UploadStatus()
            if status.offset is not None:
                offset = status.offset
            else:
                offset = (info.length or 0) if status.terminal else 0
            return dataclasses.replace(info, offset=offset, last_write_at=status.updated_at)

    def save_info(self, info: UploadInfo) -> None:
        write_atomic(self.paths(info.id).info, info.to_json().encode(), self.durable)

    def declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        updated = dataclasses.replace(info, length=length)
        self.save_info(updated)
        return updated

    def read_status(self, upload_id: str) -> UploadStatus | None:
        """The upload's status record; None while it is receiving (or its record is unreadable)."""
        try:
            return UploadStatus.from_json(read_nofollow(self.paths(upload_id).status))
        except (FileNotFoundError, PlantedLink, ValueError):  # a planted link is replaced by the next write
            return None

    def state(self, upload_id: str) -> State:
        status = self.read_status(upload_id)
        return State.RECEIVING if status is None else status.state

    def write_status(self, upload_id: str, state: State | None = None,
                     **changes: Unpack[StatusChanges]) -> UploadStatus:
        """The one writer of status records: moves the record to `state` (None: the state stays) with `changes`.

        lifecycle.advance refuses a move the lifecycle does not allow (IllegalTransition), and nothing is written.
        """
        status = advance(self.read_status(upload_id), state, time.time(), **changes)
        write_atomic(self.paths(upload_id).status, status.to_json().encode(), self.durable)
        return status

    def mark_queued(self, info: UploadInfo) -> UploadStatus:
        """receiving -> queued; an upload already queued or past it is left as it is (a requeue loop and the
        last PATCH may both get here first)."""
        current = self.read_status(info.id)
        if current is not None and current.state is not State.RECEIVING:
            return current
        return self.write_status(info.id, State.QUEUED, offset=info.offset, reason=None, queued_at=time.time())

    def mark_failed(self, info: UploadInfo, reason: str, duration: float | None = None) -> UploadStatus:
        """`failed` is for good: the record keeps the reason, the bytes are freed now rather than at expiry.

        A final concatenation's partials still in staging go too: nothing can use them any more.
        """
        status = self.write_status(info.id, State.FAILED, reason=reason, offset=info.offset, waiting_for_set=False,
                                   duration=duration)
        self.remove_data(info.id)
        for part in info.parts:
            if self.paths(part).info.exists():
                self.terminate(part, f"this partial upload was part of upload {info.id}, which failed: {reason}")
        return status

    # -- concatenation ----------------------------------------------------------------------------

    def consumer(self, part: UploadInfo) -> UploadInfo | None:
        """The final concatenation that claimed this partial, while that final exists."""
        if part.consumed_by is None:
            return None
        try:
            return self.load(part.consumed_by)
        except (errors.StoreError, OSError, ValueError, KeyError):
            return None  # its final was never created (a crash, or a refused POST): the claim holds nothing

    def assembling_into(self, part: UploadInfo) -> str | None:
        """The final concatenation this partial is being copied into right now, if any."""
        holder = self.consumer(part)
        return holder.id if holder is not None and self.read_status(holder.id) is None else None

    def claim_parts(self, final_id: str, parts: Sequence[UploadInfo]) -> None:
        """Marks complete partials as used by final_id; the caller holds each partial's lock.

        A partial belongs to one final only: used twice, one partial would become its size again in
        staging with every final that lists it.
        """
        for part in parts:
            holder = self.consumer(part)
            if holder is None or holder.id == final_id:
                continue
            if self.read_status(holder.id) is None:
                raise errors.UploadInUse(f"partial upload {part.id} is being concatenated into upload {holder.id}; a "
                                   "partial upload can be part of one final upload only")
            raise errors.UploadGone(f"partial upload {part.id} was already concatenated into upload {holder.id}")
        for part in parts:
            self.save_info(dataclasses.replace(part, consumed_by=final_id))

    def release_parts(self, final_id: str, part_ids: Sequence[str]) -> None:
        """Gives back the partials of a final that could not be made; the caller holds their locks."""
        for part_id in part_ids:
            with contextlib.suppress(errors.StoreError, OSError, ValueError, KeyError):
                part = self.load(part_id)
                if part.consumed_by == final_id:
                    self.save_info(dataclasses.replace(part, consumed_by=None))

    def terminate(self, upload_id: str, reason: str) -> None:
        paths = self.paths(upload_id)
        self.drop_checkpoint(upload_id)
        write_atomic(paths.gone, json.dumps({"reason": reason, "at": time.time()}).encode(), self.durable)
        for path in (paths.info, paths.data, paths.status, paths.checkpoint, paths.pending):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _gone_reason(self, paths: UploadPaths) -> str:
        try:
            return str(json.loads(read_nofollow(paths.gone)).get("reason") or "")
        except (OSError, ValueError):
            return ""

    def mark_pending(self, upload_id: str, offset: int) -> None:
        """The bytes from offset on are not verified yet: durable before the first of them is written, so that
        after a power cut reconcile finds it and cuts them off."""
        write_atomic(self.paths(upload_id).pending, str(offset).encode(), self.durable)

    def clear_pending(self, upload_id: str) -> None:
        self.paths(upload_id).pending.unlink(missing_ok=True)

    def remove_data(self, upload_id: str) -> None:
        paths = self.paths(upload_id)
        self.running_hashes.pop(upload_id, None)
        for path in (paths.data, paths.checkpoint, paths.pending):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- sha256 checkpoints -----------------------------------------------------------------------

    def load_checkpoint(self, upload_id: str) -> tuple[int, bytes] | None:
        try:
            raw = read_nofollow(self.paths(upload_id).checkpoint)
        except (FileNotFoundError, PlantedLink):
            return None
        if len(raw) != _CHECKPOINT.size + 112:
            return None
        (offset,) = _CHECKPOINT.unpack_from(raw)
        return offset, raw[_CHECKPOINT.size:]

    def save_checkpoint(self, upload_id: str, offset: int, state: bytes, complete: bool = False) -> None:
        """Keeps the running hash at a synced offset: in memory at once, on disk in the background.

        Not fsynced, and it may not be written at all (a full disk): a lost or stale checkpoint costs a
        re-read, never a wrong digest, because it is only written after the data up to `offset` is durable
        and is checked against the file length. A complete upload's is on disk when this returns: the
        finalizer, maybe in another process, reads it next.
        """
        self.running_hashes[upload_id] = (offset, state)
        written = self.background.submit(self._write_checkpoint, upload_id, offset, state)
        if complete:
            written.result()

    def _write_checkpoint(self, upload_id: str, offset: int, state: bytes) -> None:
        with contextlib.suppress(OSError):
            write_atomic(self.paths(upload_id).checkpoint, _CHECKPOINT.pack(offset) + state, durable=False)

    def running_hash(self, upload_id: str, offset: int) -> bytes | None:
        """The running hash this process kept for exactly `offset` bytes, if it still has it.

        Bytes before a synced offset only change by a rollback (a request's bytes cut off after a failed
        Upload-Checksum), which drops what it passes (drop_checkpoint_after); so a file of exactly that
        length holds the bytes the state was computed over.
        """
        running = self.running_hashes.get(upload_id)
        return running[1] if running is not None and running[0] == offset else None

    def drop_checkpoint(self, upload_id: str) -> None:
        self.running_hashes.pop(upload_id, None)
        # in order after the checkpoints still being written, so none of them comes back afterwards
        self.background.submit(self._unlink_checkpoint, upload_id).result()

    def _unlink_checkpoint(self, upload_id: str, beyond: int = -1) -> None:
        checkpoint = self.load_checkpoint(upload_id) if beyond >= 0 else None
        if beyond < 0 or (checkpoint is not None and checkpoint[0] > beyond):
            with contextlib.suppress(FileNotFoundError):
                self.paths(upload_id).checkpoint.unlink()

    def drop_checkpoint_after(self, upload_id: str, offset: int) -> None:
        """After the file was cut back to offset: no hash of more bytes than that may outlive the cut."""
        running = self.running_hashes.get(upload_id)
        if running is not None and running[0] > offset:
            self.running_hashes.pop(upload_id, None)
        self.background.submit(self._unlink_checkpoint, upload_id, offset).result()

    def digest_if_known(self, info: UploadInfo) -> str | None:
        """The whole file's sha256 from the checkpoint, when it covers exactly the complete upload."""
        checkpoint = self.load_checkpoint(info.id)
        if checkpoint is None or info.length is None or checkpoint[0] != info.length or not digest.available():
            return None
        return digest.ResumableSha256(checkpoint[1]).hexdigest()

    # -- writing ----------------------------------------------------------------------------------

    def open_writer(self, info: UploadInfo, sync_interval: int, hash_pool: Executor | None = None,
                    provisional: bool = False) -> UploadWriter:
        """A writer for one request's bytes. provisional: they are to be verified (Upload-Checksum) and are
        marked pending until the writer closes, so that a crash before then rolls them back."""
        try:
            return UploadWriter(self, info, sync_interval, hash_pool, provisional)
        except FileNotFoundError:
            status = self.read_status(info.id)
            if status is None or status.state is not State.FAILED:
                raise
            # a failed upload keeps its record and reason, not its bytes: there is nothing to append to
            raise errors.UploadGone(f"this upload failed: {status.reason}; start a new upload") from None

    # -- maintenance ------------------------------------------------------------------------------

    def iter_infos(self) -> Iterator[UploadInfo]:
        for upload_id in self.list_ids():
            with contextlib.suppress(errors.StoreError, OSError, ValueError, KeyError):
                yield self.load(upload_id)

    def open_uploads(self) -> list[UploadInfo]:
        """Uploads with data still in staging that are neither installed nor failed.

        Walks the data files, not the records: installed uploads keep their record for days but have no
        data left, so admission costs O(open uploads), not O(everything retained).
        """
        found = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.uploads_dir):
                upload_id, _, suffix = name.partition(".")
                if suffix != "bin" or not UPLOAD_ID.match(upload_id):
                    continue
                try:
                    info = self.load(upload_id)
                except (errors.StoreError, OSError, ValueError, KeyError):
                    continue
                if not self.state(upload_id).terminal:
                    found.append(info)
        return found

    def admission_figures(self, now: float | None = None) -> tuple[int, int]:
        """(unfinished uploads, bytes they still need) in one pass, for creation admission.

        An upload that never received a byte stops reserving space after UNSTARTED_GRACE: its client most
        likely never got the creation response, and it must not block the disk until it expires in days.
        """
        now = time.time() if now is None else now
        count = reserved = 0
        for info in self.open_uploads():
            # a partial holds staging until a final takes it, complete or not; the final then counts instead
            if (info.is_partial and info.consumed_by is None) or not (info.is_complete or info.is_partial):
                count += 1
            if info.length is None:
                continue
            if info.offset == 0 and now - max(info.created_at, info.last_write_at) > UNSTARTED_GRACE:
                continue
            reserved += max(0, info.length - info.offset)
        return count, reserved

    def reconcile(self, orphan_age: float = 60.0) -> ReconcileReport:
        """Brings the store back to a consistent state after a crash; safe while other processes run."""
        report = ReconcileReport()
        self.prepare()
        now = time.time()
        known = set(self.list_ids())
        for name in os.listdir(self.uploads_dir):
            path = self.uploads_dir / name
            upload_id, _, suffix = name.partition(".")
            try:
                age = now - path.lstat().st_mtime
            except FileNotFoundError:
                continue
            if ".tmp-" in suffix and age > orphan_age:
                path.unlink(missing_ok=True)
                report.removed_orphans.append(name)
            elif suffix == "bin" and upload_id not in known and age > orphan_age:
                path.unlink(missing_ok=True)
                report.removed_orphans.append(name)
        for upload_id in sorted(known):
            self._reconcile_one(upload_id, report)
        return report

    def _reconcile_one(self, upload_id: str, report: ReconcileReport) -> None:
        paths = self.paths(upload_id)
        pending = _read_int(paths.pending)
        if pending is not None:
            # a PATCH with Upload-Checksum died before its bytes were verified: they must not count
            with contextlib.suppress(FileNotFoundError, PlantedLink):
                _truncate_path(paths.data, pending)
            self.drop_checkpoint_after(upload_id, pending)
            paths.pending.unlink(missing_ok=True)
            report.rolled_back.append(upload_id)
        try:
            info = self.load(upload_id)
        except (errors.StoreError, ValueError, KeyError):
            return
        status = self.read_status(upload_id)
        if status is not None and status.terminal:
            return
        if info.is_final and status is None:
            report.to_assemble.append(upload_id)
        elif info.is_complete and not info.is_partial:
            report.to_finalize.append(upload_id)
        elif not info.is_complete:
            if self.durable and paths.data.exists():  # whatever survived the crash is what HEAD will now promise
                with contextlib.suppress(PlantedLink), os.fdopen(open_regular(paths.data, os.O_RDONLY), "rb") as data:
                    os.fsync(data.fileno())
            report.unfinished.append(upload_id)

    def sweep(self, expire_after: float, now: float | None = None) -> list[str]:
        """Expires unfinished uploads idle for expire_after, and records of finished ones after that long."""
        now = time.time() if now is None else now
        swept = []
        for info in list(self.iter_infos()):
            status = self.read_status(info.id)
            if status is not None and status.terminal:
                if now - status.updated_at > expire_after:
                    self.terminate(info.id, f"the record of this {status.state} upload expired")
                    swept.append(info.id)
                elif status.state is State.FAILED and self.paths(info.id).data.exists():
                    self.remove_data(info.id)  # mark_failed was cut short between the status and the unlink
            elif info.is_partial and info.is_complete:
                if self._sweep_partial(info, expire_after, now):
                    swept.append(info.id)
            elif not info.is_complete and now - max(info.last_write_at, info.created_at) > expire_after:
                self.terminate(info.id, "this upload expired: nothing was received for too long")
                swept.append(info.id)
        for name in os.listdir(self.uploads_dir):
            if name.endswith(".gone"):
                path = self.uploads_dir / name
                with contextlib.suppress(FileNotFoundError):
                    if now - path.lstat().st_mtime > 4 * expire_after:
                        path.unlink()
        return swept

    def _sweep_partial(self, info: UploadInfo, expire_after: float, now: float) -> bool:
        """A complete partial waits for a final for expire_after; the final it went into frees it."""
        holder = self.consumer(info)
        if holder is not None:
            if self.read_status(holder.id) is None:
                return False  # being assembled (or to be, after a restart)
            # assembled, but the process stopped before it freed the partial
            self.terminate(info.id, f"this partial upload was concatenated into upload {holder.id}")
            return True
        if now - max(info.last_write_at, info.created_at) <= expire_after:
            return False
        self.terminate(info.id, f"this partial upload expired: no final upload used it within {expire_after:g}s")
        return True


class UploadWriter:
    """Appends one request's bytes to an upload; used from one thread at a time, never on the event loop.

    Keeps a running sha256 of the whole file (resumed from the last checkpoint) and syncs every
    `sync_interval` bytes: fdatasync, then drop the synced pages from the page cache so a huge upload
    does not evict the model llama-server has mapped, then checkpoint the hash. Given a hash_pool, each
    batch is hashed there while it is being written: hashing and copying into the page cache each take
    a core, so one upload runs at the speed of the slower of the two rather than of their sum. Bytes
    that arrive by `splice_in` are hashed from the page cache, a step behind the writing, in the same pool.
    """

    def __init__(self, store: FileStore, info: UploadInfo, sync_interval: int,
                 hash_pool: Executor | None = None, provisional: bool = False) -> None:
        self.store = store
        self.info = info
        self.paths = store.paths(info.id)
        self.sync_interval = sync_interval
        self.hash_pool = hash_pool
        self.provisional = provisional
        try:  # readable too: spliced bytes are hashed from a mapping
            self.fd = open_regular(self.paths.data, os.O_RDWR)
        except PlantedLink as exc:
            raise errors.PlantedLinkRefused(exc.strerror) from None
        self.offset = os.fstat(self.fd).st_size
        self.synced_offset = self.offset
        self.kicked_offset = self.offset
        self.hasher = self._resume_hasher()
        self.hashed_offset = self.offset  # the hasher has seen (or is seeing) every byte before this
        self._hashing: Future[None] | None = None
        # where this request started, to undo it (a failed Upload-Checksum)
        self.request_start = (self.offset, self.hasher.state() if self.hasher else None)
        if provisional:
            try:
                store.mark_pending(info.id, self.offset)
            except BaseException:
                os.close(self.fd)
                raise

    def _resume_hasher(self) -> digest.ResumableSha256 | None:
        if not digest.available() or self.info.is_partial:
            return None
        if self.offset == 0:
            return digest.ResumableSha256()
        running = self.store.running_hash(self.info.id, self.offset)
        if running is not None:
            return digest.ResumableSha256(running)
        self.store.background.submit(int).result()  # a checkpoint still being written is the one to use
        checkpoint = self.store.load_checkpoint(self.info.id)
        if checkpoint is None or checkpoint[0] > self.offset or self.offset - checkpoint[0] > _MAX_TAIL_REHASH:
            self.store.drop_checkpoint(self.info.id)
            return None
        hasher = digest.ResumableSha256(checkpoint[1])
        position = checkpoint[0]
        while position < self.offset:  # through the descriptor opened above, never the name again
            block = os.pread(self.fd, min(_READ_BLOCK, self.offset - position), position)
            if not block:
                return None
            hasher.update(block)
            position += len(block)
        return hasher

    def hash_state(self) -> bytes | None:
        self._hash_spliced(wait=True)
        return self.hasher.state() if self.hasher else None

    def write(self, chunks: Sequence[bytes]) -> int:
        """Writes chunks at the end of the file; returns the new offset."""
        self._hash_spliced(wait=True)
        hasher = self.hasher
        hashing = None
        if hasher is not None and self.hash_pool is not None:
            state_before = hasher.state()
            hashing = self.hash_pool.submit(_hash_chunks, hasher, chunks)
        try:
            position = self._append(chunks)
        except BaseException:
            if hashing is not None:
                hashing.result()  # the hasher must stop moving before it is put back to the file's end
                self.hasher = digest.ResumableSha256(state_before)
            raise
        if hashing is not None:
            hashing.result()
        elif hasher is not None:
            _hash_chunks(hasher, chunks)
        self.offset = self.hashed_offset = position
        self._kick_writeback()
        return self.offset

    def splice_in(self, pipe_fd: int, count: int) -> int:
        """Moves count bytes waiting in a pipe to the end of the file inside the kernel; returns the new offset.

        On a failure (a full disk) the offset counts exactly the bytes that reached the file.
        """
        end = self.offset + count
        while self.offset < end:
            moved = os.splice(pipe_fd, self.fd, end - self.offset, offset_dst=self.offset)
            if not moved:
                raise OSError(errno.EIO, "the pipe ended before the bytes spliced into it")
            self.offset += moved
        if self.offset - self.hashed_offset >= _HASH_STEP:
            self._hash_spliced(wait=False)
        self._kick_writeback()
        return self.offset

    def _hash_spliced(self, wait: bool) -> None:
        """Feeds the hasher the bytes spliced in since it last caught up, read where they lie in the page
        cache; without wait the step runs in the hash pool while the next bytes arrive."""
        try:
            if self._hashing is not None:
                hashing, self._hashing = self._hashing, None
                hashing.result()
            if self.hasher is None or self.hashed_offset == self.offset:
                self.hashed_offset = self.offset
                return
            start, self.hashed_offset = self.hashed_offset, self.offset
            if wait or self.hash_pool is None:
                self.hasher.update_from_file(self.fd, start, self.offset)
            else:
                self._hashing = self.hash_pool.submit(self.hasher.update_from_file, self.fd, start, self.offset)
        except OSError:
            # a step that failed half-way leaves a hasher that missed bytes: give up the running hash, the
            # finalizer then reads the whole file once instead of trusting a wrong digest
            self.hasher = None
            self.store.drop_checkpoint(self.info.id)

    def _kick_writeback(self) -> None:
        if self.offset - self.kicked_offset >= _WRITEBACK_KICK:
            # in both modes: dirty pages piling up make the kernel throttle this writer (measured: without
            # it --no-fsync ran at 0.57x the speed of fsync on), and a later sync finds little left to do
            libc.sync_file_range(self.fd, self.kicked_offset, self.offset - self.kicked_offset,
                                  _SYNC_FILE_RANGE_WRITE)
            self.kicked_offset = self.offset

    def sync_due(self) -> bool:
        return self.offset - self.synced_offset >= self.sync_interval

    def sync_interval_step(self) -> int:
        """Every sync_interval bytes: sync (--no-fsync: let go of the written pages); returns the offset.

        Separate from write() so the few threads that write bodies never wait on the disk for a sync.
        """
        if self.store.durable:
            return self.sync()
        self._release_written()
        return self.offset

    def _append(self, chunks: Sequence[bytes]) -> int:
        """pwritev at the end of the file until every byte is in; returns the position after them."""
        views = [memoryview(chunk) for chunk in chunks if chunk]
        position = self.offset
        while views:
            written = os.pwritev(self.fd, views[:1024], position)
            position += written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if written:
                views[0] = views[0][written:]
        return position

    def _release_written(self) -> None:
        """--no-fsync: start writeback of what is still dirty and drop the pages already written back.

        Without waiting for the disk: the mode promises nothing durable, so it runs at the network's
        speed, not the disk's. Yet a huge upload must not fill the page cache (evicting the model
        llama-server has mapped), so what the disk has taken is let go as the upload goes.
        """
        self._hash_spliced(wait=True)  # pages are dropped only once hashed: else the hash reads the disk
        os.posix_fadvise(self.fd, 0, self.offset, os.POSIX_FADV_DONTNEED)
        self.synced_offset = self.offset

    def sync(self) -> int:
        """Makes everything written durable; returns the durable offset."""
        self._hash_spliced(wait=True)
        if self.store.durable and self.offset != self.synced_offset:
            os.fdatasync(self.fd)
            os.posix_fadvise(self.fd, 0, self.offset, os.POSIX_FADV_DONTNEED)
        self.synced_offset = self.offset
        if self.hasher is not None:
            self.store.save_checkpoint(self.info.id, self.offset, self.hasher.state(),
                                       complete=self.offset == self.info.length)
        if not self.store.durable:
            # also at a request's end, as short PATCHes never reach the sync interval; but alongside the
            # answer, not before it: dropping pages can wait for writeback and drain the LRU lists of
            # every core, 6-10 ms of each 64 MiB PATCH
            self.store.background.submit(_drop_written_pages, os.dup(self.fd), self.offset)
        return self.offset

    def rollback(self, offset: int, hash_state: bytes | None) -> None:
        """Cuts the file back to offset (a failed Upload-Checksum) and restores the running hash."""
        self._wait_for_hashing()  # the hasher must stop moving before it is replaced
        os.ftruncate(self.fd, offset)
        if self.store.durable:
            os.fdatasync(self.fd)
        self.offset = self.synced_offset = self.kicked_offset = self.hashed_offset = offset
        self.store.drop_checkpoint_after(self.info.id, offset)
        if hash_state is not None:
            self.hasher = digest.ResumableSha256(hash_state)
            self.store.running_hashes[self.info.id] = (offset, hash_state)

    def undo_request(self) -> None:
        """Cuts off every byte this writer wrote (Upload-Checksum did not match, or the request ended short)."""
        self.rollback(*self.request_start)

    def keep_what_arrived(self, whole_request: bool = False) -> int:
        """After a failed write: the file cut back to the bytes counted in (whole_request: to where this
        request started, as none of its bytes can be verified), the hash caught up, all synced; the offset."""
        if whole_request:
            self.undo_request()
        else:
            self.rollback(self.offset, self.hash_state())
        return self.sync()

    def close(self) -> None:
        """After the request: the descriptor is let go, and provisional bytes are no longer pending (verified,
        or cut off)."""
        self._wait_for_hashing()  # it reads through this descriptor
        os.close(self.fd)
        if self.provisional:
            self.store.clear_pending(self.info.id)

    def _wait_for_hashing(self) -> None:
        """Lets a hash step in the pool end, without using its outcome (the writer is rolled back or closed)."""
        if self._hashing is not None:
            hashing, self._hashing = self._hashing, None
            hashing.exception()


def _drop_written_pages(fd: int, end: int) -> None:
    try:
        os.posix_fadvise(fd, 0, end, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _hash_chunks(hasher: digest.ResumableSha256, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


def _read_int(path: Path) -> int | None:
    try:
        return int(read_nofollow(path).decode().strip())
    except (FileNotFoundError, PlantedLink, ValueError):
        return None


def _truncate_path(path: Path, length: int) -> None:
    fd = open_regular(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)
