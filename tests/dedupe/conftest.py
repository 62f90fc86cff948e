"""Fixtures of the tests of resume-by-digest and installs by link: the files they upload, and the CLI's environment."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.models import MIB, sha256_of

# What a body the server refuses unread may still put on the wire: what was in flight when the answer came, and
# what the lingering close drops before it closes (server/tus/linger.py: 2 MiB). Not the file: the files are 24 MiB.
REFUSED_AT_MOST = 8 * MIB


@pytest.fixture
def digest(model: Path) -> str:
    """The sha256 of the session's 24 MiB model (tests/conftest.py)."""
    return sha256_of(model)


@pytest.fixture
def copy_of(tmp_path: Path, model: Path) -> Callable[[str], Path]:
    """copy_of(name) -> the model's bytes under another file name, as another machine would have them."""
    def make(name: str) -> Path:
        folder = tmp_path / "elsewhere" / name
        folder.mkdir(parents=True)
        return Path(shutil.copyfile(model, folder / name))
    return make
