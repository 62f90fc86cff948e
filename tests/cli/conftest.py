"""Fixtures of the CLI tests that run the client as a process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """The client's environment: its own state file, and none of the developer's modeldrop settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODELDROP_")}
    env["MODELDROP_STATE_FILE"] = str(tmp_path / "client-state" / "uploads.json")
    env["PYTHONUNBUFFERED"] = "1"
    return env
