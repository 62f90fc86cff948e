"""server/store/lifecycle.py: the transition table as a table, the record on disk, records of the previous format."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from modeldrop.server.api.uploads import upload_status
from modeldrop.server.store.filestore import FileStore, write_atomic
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import (TRANSITIONS, IllegalTransition, SetProgress, State, StatusChanges,
                                              UploadStatus, advance)

RECEIVING, QUEUED, VERIFYING, INSTALLED, FAILED = State

# written out here, not derived from TRANSITIONS: a change to the lifecycle must change this test too
ALLOWED = {
    (RECEIVING, QUEUED),  # the last byte is durable (or a concatenation assembled, or a record-less upload requeued)
    (RECEIVING, FAILED),  # not a GGUF model; a concatenation that cannot be finished
    (QUEUED, VERIFYING),  # a finalize job starts
    (QUEUED, FAILED),  # a job refuses it before verifying (a planted link)
    (VERIFYING, VERIFYING),  # another attempt after a crash or an error; a verified shard waiting for its set
    (VERIFYING, INSTALLED),
    (VERIFYING, FAILED),
}
EVERY_PAIR = list(itertools.product(State, State))


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    created = FileStore(tmp_path / "staging", durable=False)
    created.prepare()
    return created


def new_upload(store: FileStore, length: int = 4) -> UploadInfo:
    return store.create(UploadInfo(id=store.new_id(), length=length, filename="m.gguf", created_at=time.time()))


def put_record(store: FileStore, upload_id: str, state: State) -> None:
    """A record in `state` as it lies on disk (receiving: none), whatever path led there."""
    if state is not State.RECEIVING:
        write_atomic(store.paths(upload_id).status, UploadStatus(state=state, updated_at=1.0).to_json().encode())


def test_lifecycle_table_is_the_one_in_this_test() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert set(TRANSITIONS) == set(State)
    assert [state for state in State if state.terminal] == [INSTALLED, FAILED]
    assert all(not TRANSITIONS[state] for state in State if state.terminal)


@pytest.mark.parametrize(("current", "new"), EVERY_PAIR, ids=[f"{a}-{b}" for a, b in EVERY_PAIR])
def test_lifecycle_advance_allows_exactly_the_table(current: State, new: State) -> None:
    before = None if current is State.RECEIVING else UploadStatus(state=current, updated_at=1.0, attempts=2)
    if (current, new) in ALLOWED:
        after = advance(before, new, now=5.0, reason="why")
        assert (after.state, after.updated_at, after.reason) == (new, 5.0, "why")
        assert after.attempts == (0 if before is None else 2)  # the rest of the record is kept
    else:
        with pytest.raises(IllegalTransition) as caught:
            advance(before, new, now=5.0)
        assert (caught.value.current, caught.value.new) == (current, new)


@pytest.mark.parametrize(("current", "new"), EVERY_PAIR, ids=[f"{a}-{b}" for a, b in EVERY_PAIR])
def test_lifecycle_store_writes_only_allowed_moves(store: FileStore, current: State, new: State) -> None:
    info = new_upload(store)
    put_record(store, info.id, current)
    path = store.paths(info.id).status
    before = path.read_bytes() if path.exists() else None
    if (current, new) in ALLOWED:
        written = store.write_status(info.id, new, detail="moved")
        assert store.read_status(info.id) == written
        assert (written.state, written.detail) == (new, "moved")
        assert json.loads(path.read_bytes())["state"] == new.value
    else:
        with pytest.raises(IllegalTransition):
            store.write_status(info.id, new, detail="moved")
        assert (path.read_bytes() if path.exists() else None) == before  # nothing written
    assert store.state(info.id) == (new if (current, new) in ALLOWED else current)


@pytest.mark.parametrize("current", list(State))
def test_lifecycle_a_write_without_a_state_only_adds_to_an_existing_record(store: FileStore, current: State) -> None:
    info = new_upload(store)
    put_record(store, info.id, current)
    if current is State.RECEIVING:
        with pytest.raises(IllegalTransition):
            store.write_status(info.id, progress=0.5)
        assert store.read_status(info.id) is None
        return
    written = store.write_status(info.id, llama_server={"reloaded": True}, progress=0.5)
    assert (written.state, written.llama_server, written.progress) == (current, {"reloaded": True}, 0.5)


def test_lifecycle_mark_queued_moves_only_a_receiving_upload(store: FileStore) -> None:
    info = new_upload(store)
    assert store.mark_queued(info).state is State.QUEUED
    queued_at = store.read_status(info.id).queued_at  # type: ignore[union-attr]
    for state in (State.QUEUED, State.VERIFYING, State.INSTALLED, State.FAILED):
        put_record(store, info.id, state)
        assert store.mark_queued(info).state is state  # the last PATCH and a requeue may both get here
        assert store.state(info.id) is state
    assert queued_at is not None


def test_lifecycle_mark_failed_is_terminal(store: FileStore) -> None:
    info = new_upload(store)
    store.write_status(info.id, State.QUEUED)
    store.write_status(info.id, State.VERIFYING, waiting_for_set=True)
    failed = store.mark_failed(info, "the set expired", duration=1.5)
    assert (failed.state, failed.reason, failed.waiting_for_set, failed.duration) == (FAILED, "the set expired", False,
                                                                                      1.5)
    for new in State:
        with pytest.raises(IllegalTransition):
            store.write_status(info.id, new)
    with pytest.raises(IllegalTransition):
        store.mark_failed(info, "again")
    assert store.read_status(info.id).reason == "the set expired"  # type: ignore[union-attr]


def test_lifecycle_state_accepts_the_strings_of_the_json() -> None:
    assert advance(None, "queued", now=1.0).state is State.QUEUED  # type: ignore[arg-type]
    assert State.INSTALLED == "installed" and json.dumps(State.FAILED) == '"failed"'


def test_lifecycle_status_changes_name_every_field_but_state_and_time() -> None:
    fields = {field.name for field in dataclasses.fields(UploadStatus)}
    assert set(StatusChanges.__annotations__) == fields - {"state", "updated_at"}


FULL = UploadStatus(
    state=State.INSTALLED, updated_at=1700000100.5, offset=4096, reason=None, detail="verified", queued_at=1700000000.0,
    attempts=2, started_at=1700000010.0, progress=1.0, last_error="OSError: [Errno 5] I/O error", sha256="ab" * 32,
    gguf={"architecture": "llama", "context_length": 4096}, publish_inode=(2049, 1234567),
    split_set=SetProgress("big", 2, (1, 2), ()), waiting_for_set=False, staged="/data/staging/sets/big/x.gguf",
    final_name="big/big-00001-of-00002.gguf", model="big", installed_at=1700000100.0, duration=90.0,
    llama_server={"reloaded": True, "listed": True},
)

ON_DISK_KEYS = {"state", "updated_at", "offset", "reason", "detail", "queued_at", "attempts", "started_at", "progress",
                "last_error", "sha256", "gguf", "publish_inode", "set", "waiting_for_set", "staged", "final_name",
                "model", "installed_at", "duration", "llama_server"}


def test_lifecycle_record_round_trips_through_json() -> None:
    assert UploadStatus.from_json(FULL.to_json()) == FULL
    assert UploadStatus.from_json(UploadStatus().to_json()) == UploadStatus()
    record = json.loads(FULL.to_json())
    assert set(record) == ON_DISK_KEYS
    assert record["state"] == "installed" and record["publish_inode"] == [2049, 1234567]
    assert record["set"] == {"prefix": "big", "count": 2, "present": [1, 2], "missing": []}


def test_lifecycle_record_round_trips_through_the_store(store: FileStore) -> None:
    info = new_upload(store)
    store.write_status(info.id, State.QUEUED)
    store.write_status(info.id, State.VERIFYING)
    changes = {field.name: getattr(FULL, field.name) for field in dataclasses.fields(FULL)
               if field.name not in ("state", "updated_at")}
    written = store.write_status(info.id, State.INSTALLED, **changes)
    assert store.read_status(info.id) == written == dataclasses.replace(FULL, updated_at=written.updated_at)
    on_disk = json.loads(store.paths(info.id).status.read_bytes())
    assert on_disk == {**json.loads(FULL.to_json()), "updated_at": written.updated_at}


# Records as the server wrote them before lifecycle.py: a dict merged key by key, only the keys written so far.
PREVIOUS_QUEUED = {"offset": 4, "queued_at": 1700000000.25, "reason": None, "state": "queued",
                   "updated_at": 1700000000.25}
PREVIOUS_WAITING_SHARD = {
    "attempts": 1, "detail": "verified; waiting for shard(s) 00002 of 00002", "gguf": {"architecture": "llama"},
    "offset": 4, "progress": 1.0, "publish_inode": [2049, 77], "queued_at": 1700000000.0, "reason": None,
    "set": {"count": 2, "missing": [2], "prefix": "big", "present": [1]}, "sha256": "cd" * 32,
    "staged": "/data/staging/sets/big/big-00001-of-00002.gguf", "started_at": 1700000001.0, "state": "verifying",
    "updated_at": 1700000002.0, "waiting_for_set": True,
}
PREVIOUS_INSTALLED = {
    "attempts": 1, "duration": 3.25, "final_name": "m.gguf", "gguf": {"architecture": "llama"},
    "installed_at": 1700000005, "llama_server": None, "model": "m", "offset": 4, "progress": 1,
    "publish_inode": [2049, 78], "queued_at": 1700000000.0, "reason": None, "sha256": "ef" * 32,
    "started_at": 1700000001.75, "state": "installed", "updated_at": 1700000005.5, "waiting_for_set": False,
}
PREVIOUS_FAILED = {"duration": 0.5, "offset": 4, "reason": "the GGUF header is truncated", "state": "failed",
                   "updated_at": 1700000003.0, "waiting_for_set": False}
PREVIOUS_STATELESS = {"last_error": "ConnectionError: Redis went away", "updated_at": 1700000004.0}


def test_lifecycle_reads_records_of_the_previous_format() -> None:
    queued = UploadStatus.from_record(PREVIOUS_QUEUED)
    assert (queued.state, queued.offset, queued.queued_at, queued.attempts) == (QUEUED, 4, 1700000000.25, 0)
    assert queued.progress is None
    shard = UploadStatus.from_record(PREVIOUS_WAITING_SHARD)
    assert (shard.state, shard.waiting_for_set, shard.publish_inode) == (VERIFYING, True, (2049, 77))
    assert shard.split_set == SetProgress("big", 2, (1,), (2,))
    installed = UploadStatus.from_record(PREVIOUS_INSTALLED)
    assert (installed.state, installed.terminal, installed.installed_at, installed.progress) == (INSTALLED, True,
                                                                                                 1700000005.0, 1.0)
    assert isinstance(installed.installed_at, float) and installed.llama_server is None
    failed = UploadStatus.from_record(PREVIOUS_FAILED)
    assert (failed.state, failed.reason, failed.duration) == (FAILED, "the GGUF header is truncated", 0.5)
    stateless = UploadStatus.from_record(PREVIOUS_STATELESS)  # an annotation that outran its record
    assert (stateless.state, stateless.last_error) == (RECEIVING, "ConnectionError: Redis went away")
    for previous in (PREVIOUS_QUEUED, PREVIOUS_WAITING_SHARD, PREVIOUS_INSTALLED, PREVIOUS_FAILED):
        rewritten = json.loads(UploadStatus.from_record(previous).to_json())
        assert {key: rewritten[key] for key in previous} == previous  # every key it had, with its value


def test_lifecycle_previous_records_on_disk_are_served_as_before(store: FileStore) -> None:
    """GET /api/uploads/{id} over records of the previous format: the document the previous code built."""
    expected: dict[str, dict[str, Any]] = {
        "queued": {"state": "queued", "progress": 0.0, "reason": None, "set": None, "duration": None},
        "verifying": {"state": "verifying", "progress": 1.0, "detail": PREVIOUS_WAITING_SHARD["detail"],
                      "set": PREVIOUS_WAITING_SHARD["set"], "sha256": "cd" * 32, "gguf": {"architecture": "llama"}},
        "installed": {"state": "installed", "progress": 1.0, "final_name": "m.gguf", "model": "m",
                      "installed_at": "2023-11-14T22:13:25Z", "duration": 3.25, "llama_server": None},
        "failed": {"state": "failed", "progress": 1.0, "reason": "the GGUF header is truncated", "duration": 0.5},
        "receiving": {"state": "receiving", "progress": 0.0, "reason": None},
    }
    records = {"queued": PREVIOUS_QUEUED, "verifying": PREVIOUS_WAITING_SHARD, "installed": PREVIOUS_INSTALLED,
               "failed": PREVIOUS_FAILED, "receiving": PREVIOUS_STATELESS}
    for name, record in records.items():
        info = new_upload(store)
        write_atomic(store.paths(info.id).status, json.dumps(record, sort_keys=True).encode(), durable=False)
        document = upload_status(store, info.id)
        assert {key: document[key] for key in expected[name]} == expected[name], name


def test_lifecycle_unreadable_records_read_as_none(store: FileStore) -> None:
    info = new_upload(store)
    for text in (b"not json", b"[1, 2]", b'{"state": "exploded"}'):
        write_atomic(store.paths(info.id).status, text, durable=False)
        assert store.read_status(info.id) is None
        assert store.state(info.id) is State.RECEIVING
