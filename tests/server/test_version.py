"""The version is written once (modeldrop.cli.__version__): the installed distribution, `modeldrop --version`
and the running server's /api/config (which the web UI shows) all say that one."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import httpx

import modeldrop.cli
from tests.support.processes import REPO, ServerProcess


def test_version_is_the_installed_distributions() -> None:
    assert importlib.metadata.version("modeldrop") == modeldrop.cli.__version__


def test_version_printed_by_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "modeldrop.cli.main", "--version"], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["modeldrop", modeldrop.cli.__version__]


def test_version_served_by_api_config(server: ServerProcess) -> None:
    config = httpx.get(server.url + "/api/config", timeout=10)
    assert config.status_code == 200, config.text
    assert config.json()["version"] == modeldrop.cli.__version__ == importlib.metadata.version("modeldrop")
