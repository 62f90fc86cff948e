"""UploadInfo: the one record every part of modeldrop passes around (after tusd's FileInfo).

It is frozen; change it with `dataclasses.replace`. `offset` is never persisted: the store fills it from
the data file's length on every load, so a crash can never leave a record that claims bytes it lacks.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")

CONCAT_PARTIAL = "partial"
CONCAT_FINAL = "final"
# what happens to an upload after its bytes (its State and status record) is in lifecycle.py


@dataclasses.dataclass(frozen=True)
class UploadInfo:
    id: str
    # None while the client deferred the length (creation-defer-length)
    length: int | None
    # the header exactly as the client sent it, echoed by HEAD (tus: "as sent")
    metadata_header: str = ""
    # validated at creation; None only for concatenation partials, which are not models on their own
    filename: str | None = None
    # the client's expected digest of the whole file (lowercase hex), checked at finalize
    sha256_expected: str | None = None
    created_at: float = 0.0
    concat: str | None = None
    # the partial uploads a final concatenation is made of, in order
    parts: tuple[str, ...] = ()
    # a partial's final concatenation, from the moment that final claimed it: no other final may use it
    consumed_by: str | None = None
    # who created it, for resuming it by digest (server/store/dedupe.py): a keyed hash of the bearer token, never
    # the token; None when the server takes no tokens
    token_fp: str | None = None
    # the model set this upload is a file of (`set` and `set_size` metadata, store/sets.py): the set's folder in
    # the models directory, and how many uploads make it; None for a file installed on its own (or a plain split
    # set's shard, whose set its name gives)
    set_name: str | None = None
    set_size: int | None = None
    # bytes durably stored: the data file's length, filled in by the store
    offset: int = 0
    # seconds since the epoch of the last byte written (data file mtime), filled in by the store
    last_write_at: float = 0.0

    @property
    def is_partial(self) -> bool:
        return self.concat == CONCAT_PARTIAL

    @property
    def is_final(self) -> bool:
        return self.concat == CONCAT_FINAL

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset >= self.length

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "id": self.id,
            "length": self.length,
            "metadata_header": self.metadata_header,
            "filename": self.filename,
            "sha256_expected": self.sha256_expected,
            "created_at": self.created_at,
            "concat": self.concat,
            "parts": list(self.parts),
            "consumed_by": self.consumed_by,
            "token_fp": self.token_fp,
            "set_name": self.set_name,
            "set_size": self.set_size,
        }
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> UploadInfo:
        record = json.loads(text)
        return cls(
            id=str(record["id"]),
            length=None if record.get("length") is None else int(record["length"]),
            metadata_header=str(record.get("metadata_header", "")),
            filename=record.get("filename"),
            sha256_expected=record.get("sha256_expected"),
            created_at=float(record.get("created_at", 0.0)),
            concat=record.get("concat"),
            parts=tuple(str(part) for part in record.get("parts") or ()),
            consumed_by=record.get("consumed_by"),
            token_fp=record.get("token_fp"),
            set_name=record.get("set_name"),
            set_size=None if record.get("set_size") is None else int(record["set_size"]),
        )
