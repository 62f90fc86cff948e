"""server/store/sets.py: the records of split sets waiting in staging."""

from __future__ import annotations

import json
from pathlib import Path

from modeldrop.server.store import sets


def test_sets_members_file_planted_as_a_link_is_not_read_through(tmp_path: Path) -> None:
    sets_dir = tmp_path / "sets"
    sets_dir.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"1": "someone-elses-upload"}))
    sets.members_path(sets_dir, "model").symlink_to(outside)
    assert sets.read_members(sets_dir, "model") == {}


def test_sets_members_are_read_back(tmp_path: Path) -> None:
    sets_dir = tmp_path / "sets"
    sets_dir.mkdir()
    sets.members_path(sets_dir, "model").write_text(json.dumps({"1": "abc", "2": "def"}))
    assert sets.read_members(sets_dir, "model") == {"1": "abc", "2": "def"}
