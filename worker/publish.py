"""Putting a verified file or split set into the models directory: atomically, never over another.

`renameat2(RENAME_NOREPLACE)` moves an entry in one step and fails if the name is taken, so a
concurrent install or a file placed by hand is never overwritten. Where the filesystem lacks it, a file
falls back to link + unlink (link also refuses an existing name).

With `--allow-overwrite` a file replaces the installed one by rename; a split set's folder cannot be
renamed over a non-empty folder, so it is swapped with it (`RENAME_EXCHANGE`) and the old one deleted.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

from modeldrop.server.libc import libc
from modeldrop.server.llama import LlamaClient
from modeldrop.server.store.filestore import PlantedLink, fsync_directory, remove_entry

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_renameat2 = getattr(libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


class NameTaken(Exception):
    """The target name exists in the models directory."""


def _rename_flags(source: Path, target: Path, flags: int) -> int:
    """renameat2's errno, 0 when it moved the entry."""
    assert _renameat2 is not None
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return 0
    return ctypes.get_errno()


def rename_noreplace(source: Path, target: Path) -> None:
    if _renameat2 is not None:
        code = _rename_flags(source, target, _RENAME_NOREPLACE)
        if code == 0:
            return
        if code == errno.EEXIST:
            raise NameTaken(str(target))
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), str(source))
    if source.is_dir() and not source.is_symlink():
        if os.path.lexists(target):
            raise NameTaken(str(target))
        os.rename(source, target)
        return
    try:
        os.link(source, target)
    except FileExistsError:
        raise NameTaken(str(target)) from None
    os.unlink(source)


def publish(source: Path, target: Path, overwrite: bool) -> None:
    """Moves source to target in one step, then makes the directory entry durable.

    Never a link: the server publishes only files and folders it made, and a link planted in staging
    would put into models/ a name that resolves to something nobody verified.
    """
    if os.path.islink(source):
        raise PlantedLink(source)
    swapped = False
    if not overwrite:
        rename_noreplace(source, target)
    elif not source.is_dir():
        os.replace(source, target)
    else:
        swapped = _swap_folder(source, target)
    fsync_directory(target.parent)
    if swapped:  # only once the new entry is durable: a power cut must not bring back a half-deleted folder
        remove_entry(source)


def _swap_folder(source: Path, target: Path) -> bool:
    """Readers see the old folder or the new one, never a mix. True when the old one now sits at source.

    A crash before the old folder is deleted leaves its shards in source (a set's staging folder): the
    set's recovery deletes them when it records the set installed (worker.finalize._record_set_installed).
    """
    try:
        rename_noreplace(source, target)
        return False
    except NameTaken:
        pass
    code = _rename_flags(source, target, _RENAME_EXCHANGE) if _renameat2 is not None else errno.ENOSYS
    if code in (errno.EINVAL, errno.ENOSYS):
        raise NameTaken("this filesystem cannot swap two folders in one step (renameat2 RENAME_EXCHANGE)")
    if code:
        raise OSError(code, os.strerror(code), str(source))
    return True


def set_permissions(fd: int, mode: int, uid: int | None, gid: int | None) -> None:
    """Through the descriptor of the verified file: a path could be a link to a file outside the data dirs."""
    if uid is not None or gid is not None:
        os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    os.fchmod(fd, mode)


def identity(path: Path) -> tuple[int, int] | None:
    """[device, inode]: the same file under whatever name it has now; None if nothing is at path.

    Of the entry itself, never of what a link there points to (lstat).
    """
    try:
        stat = os.lstat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


def same_file(a: Path, b: Path) -> bool:
    first = identity(a)
    return first is not None and first == identity(b)


def notify_llama_server(url: str, api_key: str | None, model_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Asks llama-server (router mode) to rescan its models directory, then checks it lists the model.

    Never raises: trouble here is shown in the upload's status, it does not undo an install. The talking
    is server/llama.py's, the one client of llama-server.
    """
    return LlamaClient(url, api_key, timeout).notify_installed(model_id)
