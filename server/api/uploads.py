"""GET /api/uploads/{id}: where an upload is, from first byte to installed or failed."""

from __future__ import annotations

from typing import Any

from modeldrop.server.catalog import iso
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import State, UploadStatus


def upload_status(store: FileStore, upload_id: str) -> dict[str, Any]:
    """Runs in a thread. The upload record and the finalize status merged into one JSON document."""
    info: UploadInfo = store.load(upload_id)
    status = store.read_status(upload_id) or UploadStatus()
    if status.state is State.RECEIVING:
        progress = (info.offset / info.length) if info.length else 0.0
    elif status.progress is not None:
        progress = status.progress
    else:
        progress = 1.0 if status.terminal else 0.0
    return {
        "id": info.id,
        "state": status.state.value,
        "filename": info.filename,
        "length": info.length,
        "offset": info.offset,
        "progress": round(progress, 4),
        "reason": status.reason,
        "detail": status.detail,
        "final_name": status.final_name,
        "model": status.model,
        "sha256": status.sha256,
        "sha256_expected": info.sha256_expected,
        "gguf": status.gguf,
        "set": None if status.split_set is None else status.split_set.to_record(),
        "llama_server": status.llama_server,
        "concat": info.concat,
        "created_at": iso(info.created_at),
        "updated_at": iso(status.updated_at or info.last_write_at),
        "installed_at": iso(status.installed_at),
        "duration": status.duration,
    }
