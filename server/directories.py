"""The data directories a process is about to use: present, writable, and one filesystem for rename.

`modeldrop serve` and `modeldrop worker` check them before anything starts, with or without
scripts/start.sh (which makes the same checks at boot, to stop a container before it starts).
"""

from __future__ import annotations

import os
import secrets
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
        if not os.access(directory, os.W_OK):
            raise SettingsError(f"{directory} is not writable by this user (uid {os.getuid()})")
    if os.stat(models).st_dev != os.stat(staging).st_dev:
        raise SettingsError(f"staging ({staging}) and models ({models}) are on different filesystems: put both on "
                            "one volume so a finished model can be moved in atomically")
    if staging.resolve() == models.resolve() or models.resolve() in staging.resolve().parents:
        raise SettingsError("the staging directory must not be inside the models directory: llama-server would "
                            "see unfinished uploads")
    _check_rename(staging, models)


def _check_rename(staging: Path, models: Path) -> None:
    """Two mounts of one filesystem (say, two Docker bind mounts) share a device number but still refuse
    rename(2) with EXDEV, which no stat shows: so try the real operation once."""
    name = f".modeldrop-rename-probe-{os.getpid()}-{secrets.token_hex(4)}"
    source, target = staging / name, models / name
    try:
        source.touch(exist_ok=False)
    except OSError as exc:
        raise SettingsError(f"cannot create a file in {staging}: {exc.strerror}") from None
    try:
        os.rename(source, target)
    except OSError as exc:
        source.unlink(missing_ok=True)
        raise SettingsError(f"staging ({staging}) and models ({models}) are on one filesystem but different mounts "
                            f"(renaming between them fails: {exc.strerror}): mount one volume at a common parent "
                            "(e.g. /data) instead of mounting models and staging separately") from None
    target.unlink()
