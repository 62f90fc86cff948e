"""Where the client remembers its uploads between runs: a small JSON file, replaced atomically.

One entry per file fingerprint (`tus.fingerprint`): the upload URL to continue, and the status URL to
ask about it afterwards. Every change re-reads the file first, so two runs uploading different files
at once lose nothing but a race on the same file, which the server's lock settles anyway.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
# Entries untouched for this long are dropped: servers expire unfinished uploads well before that.
FORGET_AFTER_SECONDS = 30 * 24 * 3600


def default_state_file(environ: Mapping[str, str]) -> Path:
    """$MODELDROP_STATE_FILE, else ${XDG_STATE_HOME:-~/.local/state}/modeldrop/uploads.json."""
    if environ.get("MODELDROP_STATE_FILE"):
        return Path(environ["MODELDROP_STATE_FILE"]).expanduser()
    state_home = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state_home).expanduser() / "modeldrop" / "uploads.json"


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """All remembered uploads; a missing or unreadable file is an empty memory, not an error.

    Losing the memory only costs a fresh upload, while refusing to start over a corrupt file would
    stop the user for nothing.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        return {}
    uploads = document.get("uploads")
    if not isinstance(uploads, dict):
        return {}
    return {key: value for key, value in uploads.items() if isinstance(value, dict)}


def write_entries(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the file in one step (temp file, fsync, rename): a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": FORMAT_VERSION, "uploads": entries}, indent=1, sort_keys=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".uploads-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class UploadMemory:
    """The state file seen as a map fingerprint -> entry; each change is written through at once."""

    def __init__(self, path: Path, clock: Any = time.time):
        self.path = path
        self._clock = clock

    def get(self, key: str) -> dict[str, Any] | None:
        return read_entries(self.path).get(key)

    def remember(self, key: str, **fields: Any) -> None:
        """Add or update the entry for `key` (fields merge into what is there)."""
        now = self._clock()
        entries = {name: entry for name, entry in read_entries(self.path).items()
                   if now - float(entry.get("updated_at", now)) < FORGET_AFTER_SECONDS}
        entries[key] = {**entries.get(key, {}), **fields, "updated_at": now}
        write_entries(self.path, entries)

    def forget(self, key: str) -> None:
        entries = read_entries(self.path)
        if entries.pop(key, None) is not None:
            write_entries(self.path, entries)
