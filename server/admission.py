"""Who may upload, and whether a new upload fits: tokens, model names, free disk, concurrent uploads."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from server import errors, gguf
from server.settings import Settings
from server.store.filestore import FileStore

def installed_name(filename: str) -> str:
    """The entry a finished upload becomes in the models directory: the file, or a split set's folder."""
    try:
        shard = gguf.parse_shard_name(filename)
    except gguf.GGUFError as exc:
        raise errors.InvalidFilename(exc.reason) from None
    return shard.prefix if shard else filename


class Admission:
    def __init__(self, settings: Settings, store: FileStore) -> None:
        self.settings = settings
        self.store = store
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

    def check_name_free(self, filename: str) -> None:
        """A model that is installed is never replaced silently (unless overwriting is enabled)."""
        if self.settings.allow_overwrite:
            return
        name = installed_name(filename)
        if (Path(self.settings.models_dir) / name).exists():
            what = "a split model" if name != filename else "a model"
            raise errors.AlreadyInstalled(f"{what} named {name!r} is already installed; delete it first or "
                                          "upload under another name")

    def check_capacity(self, length: int | None) -> None:
        """Runs in a thread: counts unfinished uploads and reserves Upload-Length against free space."""
        unfinished, reserved = self.store.admission_figures()
        if unfinished >= self.settings.max_uploads:
            raise errors.TooManyUploads(f"{self.settings.max_uploads} uploads are already unfinished; finish or "
                                        "cancel some, or retry later", headers={"Retry-After": "60"})
        if length:
            self.check_space(length, reserved)

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
