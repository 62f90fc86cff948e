"""cli/state.py: the resume memory survives runs, is replaced atomically and forgives a damaged file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modeldrop.cli import state


def test_default_state_file_follows_the_environment() -> None:
    assert state.default_state_file({"MODELDROP_STATE_FILE": "/x/u.json"}) == Path("/x/u.json")
    assert state.default_state_file({"XDG_STATE_HOME": "/xdg", "HOME": "/home/a"}) == Path(
        "/xdg/modeldrop/uploads.json")
    assert state.default_state_file({"HOME": "/home/a"}) == Path("/home/a/.local/state/modeldrop/uploads.json")
    assert state.default_state_file({"XDG_STATE_HOME": "", "HOME": "/home/a"}) == Path(
        "/home/a/.local/state/modeldrop/uploads.json")


def test_write_then_read_round_trips_and_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "uploads.json"
    entries = {"f1": {"url": "http://h/files/1", "size": 5}}
    state.write_entries(path, entries)
    assert state.read_entries(path) == entries
    assert json.loads(path.read_text())["version"] == state.FORMAT_VERSION


def test_write_leaves_no_temporary_files_behind(tmp_path: Path) -> None:
    path = tmp_path / "uploads.json"
    for round_number in range(3):
        state.write_entries(path, {"f": {"n": round_number}})
    assert os.listdir(tmp_path) == ["uploads.json"]


def test_a_failed_write_keeps_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "uploads.json"
    state.write_entries(path, {"f": {"url": "old"}})
    with pytest.raises(TypeError):
        state.write_entries(path, {"f": {"url": object()}})  # not JSON: fails before the rename
    assert state.read_entries(path) == {"f": {"url": "old"}}
    assert os.listdir(tmp_path) == ["uploads.json"]


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"version": 99, "uploads": {}}',
                                     '{"version": 1, "uploads": []}'])
def test_an_unreadable_memory_is_empty_not_fatal(tmp_path: Path, content: str) -> None:
    path = tmp_path / "uploads.json"
    path.write_text(content)
    assert state.read_entries(path) == {}


def test_a_missing_file_is_an_empty_memory(tmp_path: Path) -> None:
    assert state.read_entries(tmp_path / "absent.json") == {}


def test_entries_that_are_not_objects_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "uploads.json"
    path.write_text('{"version": 1, "uploads": {"good": {"url": "u"}, "bad": "x"}}')
    assert state.read_entries(path) == {"good": {"url": "u"}}


def test_remember_merges_fields_and_forget_removes(tmp_path: Path) -> None:
    memory = state.UploadMemory(tmp_path / "uploads.json", clock=lambda: 1000.0)
    memory.remember("a", url="http://h/files/1", size=10)
    memory.remember("a", status_url="http://h/api/uploads/1")
    memory.remember("b", url="http://h/files/2")
    assert memory.get("a") == {"url": "http://h/files/1", "size": 10, "status_url": "http://h/api/uploads/1",
                               "updated_at": 1000.0}
    memory.forget("a")
    assert memory.get("a") is None
    assert memory.get("b") is not None
    memory.forget("never-there")  # forgetting twice is harmless


def test_remember_drops_entries_nobody_touched_for_a_month(tmp_path: Path) -> None:
    now = [0.0]
    memory = state.UploadMemory(tmp_path / "uploads.json", clock=lambda: now[0])
    memory.remember("old", url="u1")
    now[0] = state.FORGET_AFTER_SECONDS + 1
    memory.remember("new", url="u2")
    assert memory.get("old") is None
    assert memory.get("new") is not None


def test_two_memories_on_one_file_see_each_others_changes(tmp_path: Path) -> None:
    path = tmp_path / "uploads.json"
    first, second = state.UploadMemory(path), state.UploadMemory(path)
    first.remember("a", url="u1")
    second.remember("b", url="u2")
    assert first.get("b") is not None and second.get("a") is not None
