"""The production code passes ruff (pyflakes, pycodestyle, bugbear) and mypy, as part of the test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ["server", "worker", "cli"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", "--select", "E,F,B", "--line-length", "120", "--no-cache", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    result = run("mypy", "--config-file", "setup.cfg", "--no-incremental", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr
