"""Who may upload, and whether a new upload fits: tokens, model names, free disk, concurrent uploads."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from modeldrop.server import errors, gguf
from modeldrop.server.locks import LockSpace
from modeldrop.server.settings import Settings
from modeldrop.server.store import sets
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.tus import headers as tus

Created = TypeVar("Created")
ADMISSION_LOCK = "admission"

def installed_name(filename: str, set_name: str | None = None) -> str:
    """The entry a finished upload becomes in the models directory: the file, or its set's folder."""
    try:
        shard = gguf.parse_shard_name(filename)
    except gguf.GGUFError as exc:
        raise errors.InvalidFilename(exc.reason) from None
    return set_name or (shard.prefix if shard else filename)


def read_set(metadata: Mapping[str, str], filename: str) -> sets.Member | None:
    """The model set an upload's metadata makes it a file of: `set` (the set's folder in the models directory,
    named as a file is, without `.gguf`) and `set_size` (how many uploads make the set); None for a file
    installed on its own. Refuses what can never be a set llama-server loads (400 invalid_set)."""
    name, size_text = metadata.get("set") or None, metadata.get("set_size") or None
    if name is None and size_text is None:
        if gguf.is_projector_name(filename):
            raise errors.InvalidSet(f"{filename!r} is a projector (its name holds 'mmproj'): it is installed in its "
                                    "model's folder, so it needs `set` metadata (the model's name: its folder, or an "
                                    "installed NAME.gguf) and `set_size` (how many files are uploaded for the set)")
        return None
    if name is None or size_text is None:
        raise errors.InvalidSet("`set` and `set_size` go together: the set's name and how many uploads make it")
    if name.lower().endswith(".gguf"):
        raise errors.InvalidSet(f"the set {name[:80]!r} names a folder: leave out the .gguf")
    try:
        tus.validate_filename(f"{name}.gguf")
    except errors.HTTPError as exc:
        raise errors.InvalidSet(f"the set name is a folder's name, with a file name's rules: {exc.message}") from None
    if not size_text.isascii() or not size_text.isdigit() or not 1 <= int(size_text) <= sets.MAX_SET_SIZE:
        raise errors.InvalidSet(f"`set_size` must be a whole number from 1 to {sets.MAX_SET_SIZE}, "
                                f"not {size_text[:20]!r}")
    try:
        place = sets.member(filename, name, int(size_text))
    except gguf.GGUFError as exc:
        raise errors.InvalidFilename(exc.reason) from None
    assert place is not None
    shard_count = place.shard.count if place.shard is not None else None
    problem = sets.composition_problem(place.size, [place.key], shard_count)
    if problem is not None:
        raise errors.InvalidSet(problem)
    return place


def model_id(entry: str) -> str:
    """llama-server's id for an entry of the models directory: a file without `.gguf`, a split set's folder."""
    return entry[:-5] if entry.lower().endswith(".gguf") else entry


def same_model_entries(models_dir: Path, entry: str) -> list[str]:
    """Other entries llama-server would list under entry's model id: `X/` beside `X.gguf`, or `X.GGUF`.

    Neither can replace the other in one rename (a folder and a file), so they are refused even with
    --allow-overwrite. Shown as `X/` for a folder.
    """
    wanted = model_id(entry)
    try:
        names = os.listdir(models_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name == entry or name.startswith(".") or model_id(name) != wanted:
            continue
        is_dir = os.path.isdir(os.path.join(models_dir, name))
        if is_dir or name.lower().endswith(".gguf"):  # a plain file without .gguf is not a model
            found.append(name + "/" if is_dir else name)
    return sorted(found)


def describe_same_model(entry: str, folder: bool, others: list[str]) -> str:
    shown = entry + "/" if folder else entry
    return (f"{others[0]!r} is already installed as llama-server model {model_id(entry)!r}; {shown!r} would be a "
            "second model with that id")


class Admission:
    def __init__(self, settings: Settings, store: FileStore, locks: LockSpace | None = None) -> None:
        self.settings = settings
        self.store = store
        self.locks = locks
        self.tokens = tuple(token.encode() for token in settings.token)

    @property
    def auth_required(self) -> bool:
        return bool(self.tokens)

    def check_auth(self, headers: Mapping[str, str]) -> None:
        if not self.tokens:
            return
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise errors.Unauthorized("this server needs `Authorization: Bearer <token>`",
                                      headers={"WWW-Authenticate": 'Bearer realm="modeldrop"'})
        offered = credential.strip().encode()
        # compare against every token so the time taken does not reveal which one nearly matched
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(offered, token)
        if not matched:
            raise errors.Unauthorized("the token is not valid for this server",
                                      headers={"WWW-Authenticate": 'Bearer realm="modeldrop", error="invalid_token"'})

    def check_name_free(self, filename: str, place: sets.Member | None = None) -> None:
        """A model that is installed is never replaced silently (unless overwriting is enabled), and never
        shadowed by a second entry with its llama-server id (not even with overwriting). A projector sent alone
        for a set joins the installed model of the set's name instead: that model must be there."""
        models_dir = Path(self.settings.models_dir)
        name = installed_name(filename, place.set if place is not None else None)
        if place is not None and place.adopts_installed:
            problem = sets.adoption_problem(models_dir, name, self.settings.allow_overwrite)
            if problem is not None:
                raise errors.InvalidSet(problem)
            return
        others = same_model_entries(models_dir, name)
        if others:
            reason = describe_same_model(name, name != filename, others)
            raise errors.AlreadyInstalled(f"{reason}: delete it first or upload under another name")
        if self.settings.allow_overwrite:
            return
        if (models_dir / name).exists():
            what = ("a model set" if place is not None and place.named else "a split model" if name != filename
                    else "a model")
            raise errors.AlreadyInstalled(f"{what} named {name!r} is already installed; delete it first or "
                                          "upload under another name")

    def admit(self, length: int | None, create: Callable[[], Created]) -> Created:
        """Runs in a thread: check_capacity and the creation of the upload's record, as one step.

        Checked and created apart, creations arriving together all passed on the same free slot (30 at once
        took 5 of 3 --max-uploads). The lock is the LockSpace's, so it holds across server processes and,
        with Redis, across hosts.
        """
        held = None
        if self.locks is not None:
            held = self.locks.acquire_blocking(ADMISSION_LOCK, self.settings.lock_timeout)
            if held is None:
                raise errors.Locked("the server is busy admitting other uploads; retry shortly")
        try:
            self.check_capacity(length)
            return create()
        finally:
            if held is not None:
                held.release()

    def check_capacity(self, length: int | None) -> None:
        """Runs in a thread: counts unfinished uploads and reserves Upload-Length against free space."""
        unfinished, reserved = self.store.admission_figures()
        if unfinished >= self.settings.max_uploads:
            raise errors.TooManyUploads(f"{self.settings.max_uploads} uploads are already unfinished; finish or "
                                        "cancel some, or retry later", headers={"Retry-After": "60"})
        if length:
            self.check_space(length, reserved)

    def check_append_size(self, content_length: int | None) -> None:
        """A request body larger than --max-append-size (the proxy in front of the server would cut it) is refused
        before a byte is stored. Chunked bodies, whose size is not announced, are not checked."""
        limit = self.settings.max_append_size
        if limit is not None and content_length is not None and content_length > limit:
            raise errors.TooLarge(f"this request's body is {content_length} bytes; this server takes at most {limit} "
                                  "bytes per request (--max-append-size, also GET /api/config's max_append_size): "
                                  "send the upload in smaller requests")

    def check_unsized_body(self, content_length: int | None, chunked: bool) -> None:
        """Runs in a thread: a body for an upload whose length is still deferred, which reserves nothing.

        Its bytes are admitted against free space before the first one is stored, so the body's size must
        be known: a chunked body without Content-Length is refused (the client can declare Upload-Length).
        """
        if content_length is None and chunked:
            raise errors.LengthRequired("this upload's length is not declared yet, so its request bodies need "
                                        "Content-Length (or send Upload-Length): their disk space is admitted "
                                        "before they are stored")
        if content_length:
            self.check_space(content_length)

    def check_space(self, length: int, reserved: int | None = None) -> None:
        if reserved is None:
            reserved = self.store.admission_figures()[1]
        stat = os.statvfs(self.store.staging_dir)
        free = stat.f_bavail * stat.f_frsize
        available = free - reserved - self.settings.disk_headroom
        if length > available:
            raise errors.InsufficientStorage(
                f"not enough disk space for this upload: it needs {_human(length)}, the staging filesystem has "
                f"{_human(free)} free, of which {_human(reserved)} is reserved by unfinished uploads and "
                f"{_human(self.settings.disk_headroom)} is kept as headroom")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"
