"""Creations that need no new upload: the same file is on the server already, so no byte is sent twice.

A creation that declares its file's sha256 (tus `sha256` metadata; RUFH `Repr-Digest`) is given to
`Dedupe.match` before anything is created. Both front ends call it the same way, with a `Claim` (name, length,
digest, and the fingerprint of the token that made the request), and answer the `Match` it returns instead of
making a new upload:

- `installed`: the name is installed already with this digest. Nothing to do; the answer names an upload whose
  status is `installed` (the one that installed it, while its record lasts, else a record made for this answer).
- `resumed`: an upload of the same digest, name and length, by the same token, is unfinished (or received and
  being installed): the client continues that one, from its offset, instead of starting again at zero.
- `linked`: the same bytes are installed under another name. They are installed under this name too, now, by a
  hard link on the models filesystem (a reflink where hard links are refused): verified (size, GGUF structure,
  and the digest the finalizer recorded when it hashed that file, trusted while the file's size and modification
  time are unchanged: nothing is re-read), given the configured permissions, and published under the model lock
  with RENAME_NOREPLACE (no overwrite without --allow-overwrite). Its status reads `installed` like any other.
- None: nothing matched; the caller creates an upload as usual. A name installed with other bytes raises
  AlreadyInstalled (409), as Admission.check_name_free does.

The front end answers every match with 201, the upload's Location, its Upload-Offset (== Upload-Length once
installed or received) and `Modeldrop-Match: <kind>`. README's "Resume from anywhere" says what each client does
with that.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import time
from enum import StrEnum
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modeldrop.server import errors, gguf
from modeldrop.server.admission import Admission, model_id, same_model_entries
from modeldrop.server.catalog import open_inside, public_facts, verify_open
from modeldrop.server.components import Components
from modeldrop.server.store.dedupe import (Claim, InstalledFile, candidates, find_resumable, installed_as,
                                          installed_copies)
from modeldrop.server.store.filestore import open_nofollow
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import State
from modeldrop.worker.finalize import finalize_lock_name, model_lock_name
from modeldrop.worker.publish import NameTaken, identity, notify_llama_server, publish, set_permissions

log = logging.getLogger("modeldrop.dedupe")

MATCH_HEADER = "Modeldrop-Match"
_FICLONE = 0x40049409  # ioctl(dest, FICLONE, source): share source's blocks, copy-on-write (btrfs, XFS, bcachefs)
_LOCK_WAIT = 10.0


class Kind(StrEnum):
    INSTALLED = "installed"
    RESUMED = "resumed"
    LINKED = "linked"


@dataclasses.dataclass(frozen=True)
class Match:
    kind: Kind
    info: UploadInfo
    message: str  # for people: what the server did instead of making a new upload

    def body(self) -> dict[str, Any]:
        return {"match": self.kind.value, "upload": self.info.id, "offset": self.info.offset,
                "length": self.info.length, "message": self.message}


class _NotLinked(Exception):
    """This installed copy cannot be linked (changed, refused by the filesystem): try the next, or upload."""


class Dedupe:
    def __init__(self, components: Components, admission: Admission | None = None) -> None:
        self.components = components
        self.settings = components.settings
        self.store = components.store
        self.catalog = components.catalog
        self.locks = components.locks
        self.admission = admission or Admission(self.settings, self.store, self.locks)
        self._notifier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="modeldrop-dedupe")

    def close(self) -> None:
        self._notifier.shutdown(wait=False)

    # -- the one entry point of both front ends ---------------------------------------------------

    def match(self, claim: Claim) -> Match | None:
        """Runs in a thread: what the server has of the claimed file, or None (make a new upload).

        Raises AlreadyInstalled when the name is installed with other (or unknown) bytes and overwriting is off.
        """
        installed = installed_as(self.catalog, claim.filename, claim.sha256, claim.length)
        if installed is not None:
            info = self._installed_answer(claim, installed)
            log.info("already installed: %s (sha256 %s) answered with upload=%s", installed.name, claim.sha256[:12],
                     info.id)
            return Match(Kind.INSTALLED, info, f"{installed.name} is already installed with this sha256; nothing "
                                               "to send")
        self.admission.check_name_free(claim.filename)
        upload = find_resumable(self.store, claim)
        if upload is not None:
            log.info("resumed by digest: upload=%s filename=%s at %d of %s", upload.id, claim.filename, upload.offset,
                     upload.length)
            return Match(Kind.RESUMED, upload, f"continuing the unfinished upload of {claim.filename} with this "
                                               f"sha256 from byte {upload.offset}")
        if gguf.parse_shard_name(claim.filename) is not None:
            return None  # a shard is installed with its set, never on its own
        for source in installed_copies(self.catalog, claim.sha256, claim.length):
            try:
                info = self._link_install(claim, source)
            except _NotLinked as exc:
                log.info("%s could not be linked as %s: %s", source.name, claim.filename, exc)
                continue
            return Match(Kind.LINKED, info, f"installed as {claim.filename} from the same bytes already installed as "
                                            f"{source.name}; nothing to send")
        return None

    def lookup(self, size: int, token_fp: str | None) -> list[dict[str, Any]]:
        """Runs in a thread: the digests the server knows of files of `size` bytes (GET /api/lookup)."""
        return candidates(self.store, self.catalog, size, token_fp)

    # -- already installed --------------------------------------------------------------------------

    def _installed_answer(self, claim: Claim, installed: InstalledFile) -> UploadInfo:
        """The upload that installed it while its record lasts; else a record, made now, that says installed."""
        if installed.upload_id:
            with contextlib.suppress(Exception):
                status = self.store.read_status(installed.upload_id)
                if status is not None and status.state is State.INSTALLED and status.final_name == installed.name:
                    return self.store.load(installed.upload_id)
        facts = None
        with contextlib.suppress(OSError):
            facts, _ = self.catalog.facts_of(self.catalog.models_dir / installed.name)
        info = self._new_info(claim)
        now = time.time()
        # the status first, the record last: an upload exists once its record does, and this one is then installed
        self.store.write_status(info.id, State.QUEUED, offset=claim.length, queued_at=now)
        self.store.write_status(info.id, State.VERIFYING, attempts=1, started_at=now, progress=1.0, sha256=claim.sha256,
                                gguf=facts)
        self.store.write_status(info.id, State.INSTALLED, final_name=installed.name,
                                model=model_id(installed.name.split("/", 1)[0]), installed_at=now, duration=0.0,
                                offset=claim.length, detail="already installed with this sha256; nothing was sent")
        self.store.save_info(info)
        return self.store.load(info.id)

    def _new_info(self, claim: Claim) -> UploadInfo:
        return UploadInfo(id=self.store.new_id(), length=claim.length, metadata_header=claim.metadata_header,
                          filename=claim.filename, sha256_expected=claim.sha256, created_at=time.time(),
                          token_fp=claim.token_fp)

    # -- installed by link ----------------------------------------------------------------------------

    def _link_install(self, claim: Claim, source: InstalledFile) -> UploadInfo:
        """Publishes source's bytes as claim.filename; _NotLinked when it cannot, with nothing left behind."""
        try:
            file = open_inside(self.catalog.models_dir, source.name)  # never through a link
        except OSError as exc:
            raise _NotLinked(f"cannot open it: {exc.strerror}") from None
        with file:
            stat = os.fstat(file.fileno())
            if stat.st_size != claim.length or stat.st_mtime_ns != source.mtime_ns:
                raise _NotLinked("it changed since its digest was recorded")
            try:
                facts = verify_open(file)
            except (gguf.GGUFError, OSError) as exc:
                raise _NotLinked(f"its GGUF structure does not check: {exc}") from None
            if facts.architecture is None and facts.split_no in (None, 0):
                raise _NotLinked("its GGUF header has no general.architecture")
            info = self._new_info(claim)
            with self._holding(finalize_lock_name(info.id)):  # nobody finalizes it meanwhile (a requeue)
                return self._publish_link(claim, source, info, file.fileno(), facts)

    def _publish_link(self, claim: Claim, source: InstalledFile, info: UploadInfo, source_fd: int,
                      facts: gguf.GGUFFacts) -> UploadInfo:
        data = self.store.paths(info.id).data
        target = self.catalog.models_dir / claim.filename
        started = time.time()
        try:
            how, fd = _place(source_fd, data, self.store.durable)
        except OSError as exc:
            raise _NotLinked(f"{type(exc).__name__}: {exc}") from None
        try:
            stat = os.fstat(fd)
            verified = (stat.st_dev, stat.st_ino)
            # a complete upload from here on: after a crash the finalizer verifies (and hashes) it as any other
            self.store.save_info(info)
            self.store.write_status(info.id, State.QUEUED, offset=claim.length, queued_at=started)
            self.store.write_status(info.id, State.VERIFYING, attempts=1, started_at=started, progress=1.0,
                                    sha256=claim.sha256, gguf=public_facts(facts), publish_inode=verified,
                                    detail=f"same bytes as the installed {source.name}")
            self._set_permissions(fd, stat)
            with self._holding(model_lock_name(claim.filename)):
                others = same_model_entries(self.catalog.models_dir, claim.filename)
                if others:
                    raise errors.AlreadyInstalled(f"{others[0]!r} is already installed as llama-server model "
                                                  f"{model_id(claim.filename)!r}")
                if identity(data) != verified:
                    raise _NotLinked(f"{data.name} in staging was replaced before it was published")
                publish(data, target, overwrite=self.settings.allow_overwrite)
                if identity(target) != verified:  # a swap that won the race is not ours to leave there
                    raise _NotLinked("the new name was replaced while it was published")
        except NameTaken:
            self._undo(info, data)
            raise errors.AlreadyInstalled(f"a model named {claim.filename!r} is already installed; delete it first or "
                                          "upload under another name") from None
        except (_NotLinked, errors.HTTPError):
            self._undo(info, data)
            raise
        except OSError as exc:
            self._undo(info, data)
            raise _NotLinked(f"{type(exc).__name__}: {exc}") from None
        finally:
            if fd != source_fd:
                os.close(fd)
        return self._record_installed(claim, source, info, target, how, started)

    def _set_permissions(self, fd: int, stat: os.stat_result) -> None:
        """The configured mode and owner, unless the file has them already (a hard link shares the installed
        file's inode, which the finalizer gave them when it installed it)."""
        settings = self.settings
        wanted = (settings.file_mode, settings.file_uid, settings.file_gid)
        if (stat.st_mode & 0o7777, stat.st_uid if wanted[1] is not None else None,
                stat.st_gid if wanted[2] is not None else None) != wanted:
            try:
                set_permissions(fd, *wanted)
            except PermissionError as exc:
                raise _NotLinked(f"cannot give it the configured permissions: {exc.strerror}") from None

    def _record_installed(self, claim: Claim, source: InstalledFile, info: UploadInfo, target: Path, how: str,
                          started: float) -> UploadInfo:
        now = time.time()
        stat = os.lstat(target)
        self.store.write_status(info.id, State.INSTALLED, reason=None, progress=1.0, final_name=claim.filename,
                                model=model_id(claim.filename), installed_at=now, duration=round(now - started, 3),
                                offset=claim.length, detail=f"installed by {how} from {source.name}; nothing was sent")
        self.store.remove_data(info.id)  # the staging name is gone with the rename; its checkpoint files too
        self.catalog.write_record(claim.filename, sha256=claim.sha256, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                  upload_id=info.id, installed_at=now, same_as=source.name)
        log.info("installed upload=%s as %s by %s from %s (sha256 %s)", info.id, target, how, source.name,
                 claim.sha256[:12])
        if self.settings.llama_server_url:
            self._notifier.submit(self._notify, info.id, claim.filename)
        return self.store.load(info.id)

    def _notify(self, upload_id: str, entry: str) -> None:
        url = self.settings.llama_server_url
        assert url is not None
        outcome = notify_llama_server(url, self.settings.llama_api_key, model_id(entry))
        with contextlib.suppress(Exception):
            self.catalog.write_record(entry, llama_server=outcome)
            self.store.write_status(upload_id, llama_server=outcome)

    def _undo(self, info: UploadInfo, data: Path) -> None:
        """A link install that stopped before publishing leaves nothing: not its staging name, not its record."""
        with contextlib.suppress(OSError):
            self.store.terminate(info.id, "the install by link was abandoned; the file is uploaded instead")
        with contextlib.suppress(OSError):
            data.unlink()

    @contextlib.contextmanager
    def _holding(self, name: str) -> Iterator[None]:
        held = self.locks.acquire_blocking(name, _LOCK_WAIT)
        if held is None:
            raise errors.Locked(f"another install is under way ({name}); retry shortly")
        try:
            yield
        finally:
            held.release()


def _place(source_fd: int, data: Path, durable: bool) -> tuple[str, int]:
    """Makes `data` (in staging, not there yet) the same bytes as source_fd: a hard link to its inode, else a
    reflink copy; ("hard link", source_fd) or ("reflink", new fd). _NotLinked when the filesystem allows neither.

    The link is made from the open descriptor (/proc/self/fd), so it is the very file opened and checked, not
    whatever its name holds by now.
    """
    directory = os.open(data.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # linkat(AT_SYMLINK_FOLLOW): os.link uses it only with a dir_fd; plain link() would link the /proc entry
        os.link(f"/proc/self/fd/{source_fd}", data.name, dst_dir_fd=directory, follow_symlinks=True)
        return "hard link", source_fd
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.EMLINK, errno.EXDEV, errno.ENOENT, errno.EOPNOTSUPP):
            raise
        refused = exc
    finally:
        os.close(directory)
    fd = open_nofollow(data, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        fcntl.ioctl(fd, _FICLONE, source_fd)
    except OSError as exc:
        os.close(fd)
        data.unlink(missing_ok=True)
        raise _NotLinked(f"the filesystem refused a hard link ({refused.strerror}) and a reflink ({exc.strerror})") \
            from None
    if durable:
        os.fsync(fd)
    return "reflink", fd
