"""Fixtures of the deployment tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def mount() -> Iterator[Any]:
    """mount(*mount_args, target): a real mount (root only) that is undone at the end of the test."""
    targets: list[Path] = []

    def do_mount(*args: str, target: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a filesystem")
        if shutil.which("mount") is None:
            pytest.skip("no mount command")
        result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here ({result.stderr.strip()})")
        targets.append(target)

    yield do_mount
    for target in reversed(targets):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
