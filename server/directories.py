"""The data directories a process is about to use: present, writable, and one filesystem for rename.

`modeldrop serve` and `modeldrop worker` check them before anything starts, with or without
scripts/start.sh (which makes the same checks at boot, to stop a container before it starts).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from modeldrop.server.settings import Settings, SettingsError
from modeldrop.server.store.filestore import make_directories


def check_directories(settings: Settings) -> None:
    """Staging and models must be one filesystem, so that installing a model is a rename, never a copy."""
    models, staging = Path(settings.models_dir), Path(settings.staging_dir)
    for directory in (models, staging):
        try:
            make_directories(directory)  # durable: a power cut must not take the folders away
        except OSError as exc:
            raise SettingsError(f"cannot create {directory}: {exc.strerror}") from None
        try:
            probe_writable(directory)
        except OSError:
            raise SettingsError(f"{directory} is not writable by this user (uid {os.getuid()})") from None
    if os.stat(models).st_dev != os.stat(staging).st_dev:
        raise SettingsError(f"staging ({staging}) and models ({models}) are on different filesystems: put both on "
                            "one volume so a finished model can be moved in atomically")
    if staging.resolve() == models.resolve() or models.resolve() in staging.resolve().parents:
        raise SettingsError("the staging directory must not be inside the models directory: llama-server would "
                            "see unfinished uploads")
    _check_rename(staging, models)


def probe_writable(directory: Path | str) -> None:
    """Raises OSError unless this process can create a file in `directory`. The file is made with O_TMPFILE
    and so never has a name: nothing appears in models/, which llama-server may list at any moment. Where
    the file system has no O_TMPFILE, access(2) decides."""
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR) or not os.access(directory, os.W_OK):
            raise


def _check_rename(staging: Path, models: Path) -> None:
    """Two mounts of one filesystem (say, two Docker bind mounts) share a device number but still refuse
    rename(2) with EXDEV, which no stat shows: so ask rename(2) itself, without creating anything in models/
    (llama-server may list it at any moment). Renaming onto `models/.` is always refused, but the kernel
    refuses a crossing of mounts (EXDEV) before it looks at either name, and anything else (EBUSY) after."""
    never_created = os.path.join(staging, ".modeldrop-rename-probe")
    try:
        os.rename(never_created, os.path.join(models, "."))
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise SettingsError(f"staging ({staging}) and models ({models}) are on one filesystem but different "
                                f"mounts (renaming between them fails: {exc.strerror}): mount one volume at a common "
                                "parent (e.g. /data) instead of mounting models and staging separately") from None
