"""An upload's lifecycle after its bytes: the State it is in, the status record kept for it, and the moves allowed.

This module owns all three. The store reads and writes the record (`FileStore.read_status`, `write_status`,
`mark_queued`, `mark_failed`), and every change goes through `advance`, the one place that refuses a move the
table below does not list, with the one error IllegalTransition.

    receiving ──▶ queued ──▶ verifying ──▶ installed
        │           │         │    ▲
        └───────────┴─────────┴────┴──▶ failed

- receiving → queued: the last byte is durable (or a concatenation is assembled, or the requeue loop finds a
  complete upload that never got its record); receiving has no record on disk, it is the absence of one.
- receiving → failed: the bytes are not a GGUF model, or a concatenation cannot be finished after a crash.
- queued → verifying: a finalize job starts on it. queued → failed: a job refuses it before verifying
  anything (its data is a planted link).
- verifying → verifying: a new attempt after a crash or an error (the job counts `attempts`), and a verified
  shard staged in its split set, waiting for the others (`waiting_for_set`).
- verifying → installed | failed: the outcome.
- installed and failed are terminal: no move leaves them. A requeued upload is not moved back to queued: it
  stays where it was and the next job run moves it on (verifying → verifying).

A write that names no state only adds to the record (progress, digest, llama-server's answer, the set's
progress) and leaves its state as it is; it needs a record to add to.

On disk the record is JSON with the keys below (`set` for split_set), every key present; GET /api/uploads/{id}
serves a view of it. Records written before this module (only the keys that had been written) read the same.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypedDict, Unpack


class State(StrEnum):
    RECEIVING = "receiving"  # bytes are still arriving: no status record exists yet
    QUEUED = "queued"  # every byte is durable; handed to the finalizer
    VERIFYING = "verifying"  # a finalize job is on it, or a verified shard waits in staging for its set
    INSTALLED = "installed"  # in the models directory
    FAILED = "failed"  # never to be installed; the record keeps the reason

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.INSTALLED, State.FAILED})

TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType({
    State.RECEIVING: frozenset({State.QUEUED, State.FAILED}),
    State.QUEUED: frozenset({State.VERIFYING, State.FAILED}),
    State.VERIFYING: frozenset({State.VERIFYING, State.INSTALLED, State.FAILED}),
    State.INSTALLED: frozenset(),
    State.FAILED: frozenset(),
})


class IllegalTransition(Exception):
    """A status change the lifecycle does not allow (from a terminal state, or skipping one); nothing is written."""

    def __init__(self, current: State, new: State | None) -> None:
        self.current = current
        self.new = new
        if new is None:
            message = f"an upload in state {current} has no status record to add to"
        else:
            message = f"an upload cannot go from {current} to {new}"
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class SetProgress:
    """A model set's files as one of its members last saw them: a split model's shards (1-based numbers), and
    for a set the client named (`set` metadata), the files staged of how many make it (a projector among them)."""

    prefix: str  # the set's folder in the models directory (a split set's shard prefix, or the `set` metadata)
    count: int  # shards of its split model; 0 when its model is one file (or not staged yet)
    present: tuple[int, ...] = ()
    missing: tuple[int, ...] = ()
    size: int | None = None  # uploads that make a set the client named (`set_size`); None for a plain split set
    files: tuple[str, ...] = ()  # the set's files verified and staged so far

    @property
    def waiting(self) -> int:
        """Files the set still needs before it is published."""
        if self.size is None:
            return len(self.missing)
        return max(0, self.size - len(self.files))

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"prefix": self.prefix, "count": self.count, "present": list(self.present),
                                  "missing": list(self.missing)}
        if self.size is not None:  # a named set: its files, whatever parts they are (a plain split set's as before)
            record.update(size=self.size, files=list(self.files), waiting=self.waiting)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SetProgress:
        return cls(prefix=str(record.get("prefix", "")), count=int(record.get("count") or 0),
                   present=tuple(int(n) for n in record.get("present") or ()),
                   missing=tuple(int(n) for n in record.get("missing") or ()),
                   size=_optional(int, record.get("size")),
                   files=tuple(str(name) for name in record.get("files") or ()))


@dataclasses.dataclass(frozen=True)
class UploadStatus:
    """The finalize status of one upload (`<id>.status`). Frozen: `advance` makes the next one."""

    state: State = State.RECEIVING
    # seconds since the epoch of the last write; the requeue loop's measure of "nobody is working on it"
    updated_at: float = 0.0
    # bytes the upload holds, kept here because its data file leaves staging (installed, staged, failed)
    offset: int | None = None
    # why it failed, in words for a person; None unless failed
    reason: str | None = None
    # what it waits for now (a split set's missing shards)
    detail: str | None = None
    queued_at: float | None = None
    # finalize runs started on it; the job gives up after a few
    attempts: int = 0
    # when the first run started, for the duration
    started_at: float | None = None
    # 0..1 of the verification (the sha256 read)
    progress: float | None = None
    # the exception of the last run that did not finish, for the next run's message
    last_error: str | None = None
    sha256: str | None = None
    # the GGUF header's facts shown to users (catalog.public_facts)
    gguf: dict[str, Any] | None = None
    # (device, inode) of the verified file before it is moved: how a rerun finds where it went
    publish_inode: tuple[int, ...] | None = None
    # a shard's split set (`set` on disk)
    split_set: SetProgress | None = None
    # a verified shard waiting in staging for the rest of its set
    waiting_for_set: bool = False
    # where such a shard waits
    staged: str | None = None
    # the entry in the models directory, relative to it, and llama-server's model id for it
    final_name: str | None = None
    model: str | None = None
    installed_at: float | None = None
    # seconds from the first run's start to the outcome
    duration: float | None = None
    # llama-server's answer to the rescan after installing
    llama_server: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def to_record(self) -> dict[str, Any]:
        """The record as plain JSON types: what is on disk, and what the RQ job returns."""
        record = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        record["state"] = self.state.value
        record["publish_inode"] = None if self.publish_inode is None else list(self.publish_inode)
        record["set"] = None if self.split_set is None else self.split_set.to_record()
        del record["split_set"]
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_record(), sort_keys=True)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> UploadStatus:
        """Any record this server wrote, including those of earlier versions (only the keys once written)."""
        inode = record.get("publish_inode")
        split_set = record.get("set")
        return cls(
            state=State(record.get("state") or State.RECEIVING),
            updated_at=float(record.get("updated_at") or 0.0),
            offset=_optional(int, record.get("offset")),
            reason=_optional(str, record.get("reason")),
            detail=_optional(str, record.get("detail")),
            queued_at=_optional(float, record.get("queued_at")),
            attempts=int(record.get("attempts") or 0),
            started_at=_optional(float, record.get("started_at")),
            progress=_optional(float, record.get("progress")),
            last_error=_optional(str, record.get("last_error")),
            sha256=_optional(str, record.get("sha256")),
            gguf=dict(record["gguf"]) if isinstance(record.get("gguf"), Mapping) else None,
            publish_inode=tuple(int(n) for n in inode) if inode else None,
            split_set=SetProgress.from_record(split_set) if isinstance(split_set, Mapping) else None,
            waiting_for_set=bool(record.get("waiting_for_set", False)),
            staged=_optional(str, record.get("staged")),
            final_name=_optional(str, record.get("final_name")),
            model=_optional(str, record.get("model")),
            installed_at=_optional(float, record.get("installed_at")),
            duration=_optional(float, record.get("duration")),
            llama_server=dict(record["llama_server"]) if isinstance(record.get("llama_server"), Mapping) else None,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> UploadStatus:
        record = json.loads(text)
        if not isinstance(record, Mapping):
            raise ValueError("a status record is a JSON object")
        return cls.from_record(record)


class StatusChanges(TypedDict, total=False):
    """The fields a write may change besides the state (UploadStatus's, less state and updated_at)."""

    offset: int | None
    reason: str | None
    detail: str | None
    queued_at: float | None
    attempts: int
    started_at: float | None
    progress: float | None
    last_error: str | None
    sha256: str | None
    gguf: dict[str, Any] | None
    publish_inode: tuple[int, ...] | None
    split_set: SetProgress | None
    waiting_for_set: bool
    staged: str | None
    final_name: str | None
    model: str | None
    installed_at: float | None
    duration: float | None
    llama_server: dict[str, Any] | None


def check_transition(current: State, new: State) -> None:
    """The one place a move between states is allowed or refused."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(current, new)


def advance(current: UploadStatus | None, state: State | None, now: float,
            **changes: Unpack[StatusChanges]) -> UploadStatus:
    """The record after a write: `current` (None: no record yet, i.e. receiving) moved to `state` with `changes`.

    Without a state the write only adds to the record, which must exist. Raises IllegalTransition.
    """
    base = current if current is not None else UploadStatus()
    if state is None:
        if current is None:
            raise IllegalTransition(State.RECEIVING, None)
        new_state = base.state
    else:
        new_state = State(state)
        check_transition(base.state, new_state)
    return dataclasses.replace(base, state=new_state, updated_at=now, **changes)


def _optional(cast: Any, value: Any) -> Any:
    return None if value is None else cast(value)
