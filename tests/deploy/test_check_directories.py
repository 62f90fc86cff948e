"""`modeldrop serve` and `modeldrop worker` run without scripts/start.sh still refuse a layout where
installing a model could not be a rename: the same check as start.sh, in the process itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeldrop.server.directories import check_directories
from modeldrop.server.settings import Settings
from tests.deploy.support import run_start
from tests.support.disk import CreatedEntries
from tests.support.processes import REPO, free_port


def run_command(command: str, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "modeldrop.cli.main", command, "--data-dir", str(data), *extra]
    if command == "serve":
        argv += ["--host", "127.0.0.1", "--port", str(free_port())]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_separate_mounts_of_one_filesystem_are_refused(tmp_path: Path, mount, command: str) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data / "staging").mkdir(parents=True)
    (data / "models").mkdir()
    elsewhere.mkdir()
    mount("--bind", str(elsewhere), target=data / "staging")
    assert os.stat(data / "staging").st_dev == os.stat(data / "models").st_dev, "same device: stat alone passes"
    # the worker checks before it connects: no Redis needs to listen there
    result = run_command(command, data, *(["--redis-url", "redis://127.0.0.1:1"] if command == "worker" else []))
    assert result.returncode == 2, result.stderr
    assert "different mounts" in result.stderr
    assert list((data / "staging").iterdir()) == [] and list((data / "models").iterdir()) == [], \
        "the rename probe must clean up after itself"


def test_the_start_checks_put_nothing_in_models_even_for_a_moment(tmp_path: Path) -> None:
    """llama-server may list models/ at any time, and the server checks its directories at every restart:
    a probe file created there, however briefly, is an entry that is not a complete, verified model."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    with CreatedEntries(data / "models") as created:
        check_directories(Settings(data_dir=data))
        started = run_start(tmp_path, env={"MODELDROP_DATA_DIR": str(data)})
    assert started.returncode == 0, started.output
    assert created.names == []
