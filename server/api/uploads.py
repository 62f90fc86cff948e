"""GET /api/uploads/{id}: where an upload is, from first byte to installed or failed."""

from __future__ import annotations

from typing import Any

from modeldrop.server.catalog import iso
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.info import RECEIVING, UploadInfo


def upload_status(store: FileStore, upload_id: str) -> dict[str, Any]:
    """Runs in a thread. The upload record and the finalize status merged into one JSON document."""
    info: UploadInfo = store.load(upload_id)
    status = store.read_status(upload_id) or {}
    state = status.get("state") or RECEIVING
    if state == RECEIVING or not status:
        progress = (info.offset / info.length) if info.length else 0.0
    else:
        progress = float(status.get("progress", 1.0 if state in ("installed", "failed") else 0.0))
    return {
        "id": info.id,
        "state": state,
        "filename": info.filename,
        "length": info.length,
        "offset": info.offset,
        "progress": round(progress, 4),
        "reason": status.get("reason"),
        "detail": status.get("detail"),
        "final_name": status.get("final_name"),
        "model": status.get("model"),
        "sha256": status.get("sha256"),
        "sha256_expected": info.sha256_expected,
        "gguf": status.get("gguf"),
        "set": status.get("set"),
        "llama_server": status.get("llama_server"),
        "concat": info.concat,
        "created_at": iso(info.created_at),
        "updated_at": iso(status.get("updated_at") or info.last_write_at),
        "installed_at": iso(status.get("installed_at")),
        "duration": status.get("duration"),
    }
