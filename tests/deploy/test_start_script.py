"""scripts/start.sh run for real: boot checks on real directories and mounts, then exec of modeldrop.

The `modeldrop` it execs is a recording stand-in on PATH (tests.deploy.support): it proves the exec (same
pid as start.sh), the arguments passed through and the environment handed over, without starting a server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.support import START, SYSTEM_PATH, read_only_dir, run_start, writable, write_fake_modeldrop


def test_creates_the_directories_and_execs_modeldrop_serve_with_the_options(tmp_path: Path) -> None:
    data = tmp_path / "data dir"  # a space: paths must survive quoting
    result = run_start(tmp_path, "--token", "secret token", "--max-size=2G",
                       env={"MODELDROP_DATA_DIR": str(data)})

    assert result.returncode == 0, result.output
    assert (data / "models").is_dir() and (data / "staging").is_dir()
    assert result.execed, "modeldrop must replace start.sh (exec), so it gets the signals as PID 1"
    assert result.record is not None
    assert result.record["argv"] == ["serve", "--token", "secret token", "--max-size=2G"]
    assert result.record["env"]["MODELDROP_MODELS_DIR"] == str(data / "models")
    assert result.record["env"]["MODELDROP_STAGING_DIR"] == str(data / "staging")
    assert "secret token" not in result.output, "the token must not be logged"
    assert "reconciled by the server at start" in result.stdout


def test_defaults_are_data_under_the_working_directory_on_loopback_8080(tmp_path: Path) -> None:
    result = run_start(tmp_path, "serve")

    assert result.returncode == 0, result.output
    assert (tmp_path / "data" / "models").is_dir() and (tmp_path / "data" / "staging").is_dir()
    assert result.record is not None and result.record["argv"] == ["serve"]
    assert result.record["env"]["MODELDROP_HOST"] == "127.0.0.1"
    assert result.record["env"]["MODELDROP_PORT"] == "8080"
    assert "starting modeldrop serve on 127.0.0.1:8080" in result.stdout


def test_environment_host_and_port_are_kept_and_flags_are_reported(tmp_path: Path) -> None:
    result = run_start(tmp_path, "--port", "9001", env={"MODELDROP_HOST": "0.0.0.0", "MODELDROP_PORT": "9000"})

    assert result.returncode == 0, result.output
    assert result.record is not None
    assert result.record["env"]["MODELDROP_HOST"] == "0.0.0.0"
    assert result.record["env"]["MODELDROP_PORT"] == "9000"  # the flag, passed through, wins in modeldrop
    assert "starting modeldrop serve on 0.0.0.0:9001" in result.stdout


def test_directory_flags_win_over_the_environment_in_both_spellings(tmp_path: Path) -> None:
    from_env, from_flag, staging = tmp_path / "env-data", tmp_path / "flag-data", tmp_path / "flag-staging"
    models = tmp_path / "flag-models"
    result = run_start(tmp_path, "serve", "--data-dir", str(from_flag), f"--staging-dir={staging}",
                       env={"MODELDROP_DATA_DIR": str(from_env)})
    assert result.returncode == 0, result.output
    assert staging.is_dir() and (from_flag / "models").is_dir()
    assert not from_env.exists() and not (from_flag / "staging").exists()
    assert result.record is not None
    assert result.record["argv"] == ["serve", "--data-dir", str(from_flag), f"--staging-dir={staging}"]

    result = run_start(tmp_path, f"--models-dir={models}", env={"MODELDROP_DATA_DIR": str(from_env),
                                                                "MODELDROP_MODELS_DIR": str(tmp_path / "x")})
    assert result.returncode == 0, result.output
    assert models.is_dir() and (from_env / "staging").is_dir() and not (tmp_path / "x").exists()


def test_worker_command_gets_its_options(tmp_path: Path) -> None:
    result = run_start(tmp_path, "worker", "--redis-url", "redis://127.0.0.1:1/0", "--workers", "2",
                       env={"MODELDROP_DATA_DIR": str(tmp_path / "d")})

    assert result.returncode == 0, result.output
    assert result.execed
    assert result.record is not None
    assert result.record["argv"] == ["worker", "--redis-url", "redis://127.0.0.1:1/0", "--workers", "2"]
    assert (tmp_path / "d" / "models").is_dir() and (tmp_path / "d" / "staging").is_dir()
    assert "starting modeldrop worker" in result.stdout


def test_lists_installed_models_with_sizes_and_free_space(tmp_path: Path) -> None:
    models, staging = tmp_path / "data" / "models", tmp_path / "data" / "staging"
    (models / "Qwen3-32B-Q4").mkdir(parents=True)
    staging.mkdir()
    with open(models / "Llama-3.1-70B-Q4_K_M.gguf", "wb") as big:
        big.truncate(5 * 1024**3)  # sparse: its apparent size is what counts
    for shard in ("00001", "00002"):
        with open(models / "Qwen3-32B-Q4" / f"q-{shard}-of-00002.gguf", "wb") as part:
            part.truncate(1536 * 1024)
    (models / "empty-folder").mkdir()
    (models / "README.txt").write_text("not a model")
    (models / "half.gguf.part").write_bytes(b"x")
    for leftover in ("u1", "u1.info", "u2"):
        (staging / leftover).write_text("")

    result = run_start(tmp_path)

    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert "start:   Llama-3.1-70B-Q4_K_M.gguf  5.0GiB" in lines
    assert "start:   Qwen3-32B-Q4/  2 file(s), 3.0MiB" in lines
    assert "start:   empty-folder/  (no .gguf files: llama-server ignores it)" in lines
    assert "README.txt" not in result.stdout and "half.gguf.part" not in result.stdout
    assert re.search(r"^start: free space: [0-9.]+[KMGTPE]iB on the models/staging filesystem$",
                     result.stdout, re.M), result.stdout
    assert f"staging {staging}: 3 entries" in result.stdout


def test_an_empty_models_directory_says_so(tmp_path: Path) -> None:
    result = run_start(tmp_path)
    assert result.returncode == 0, result.output
    assert "start:   (none yet)" in result.stdout.splitlines()


def test_unwritable_models_directory_stops_before_modeldrop(tmp_path: Path, mount) -> None:
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    with read_only_dir(models, mount):
        assert not writable(models), "the setup must really make the directory read-only"
        result = run_start(tmp_path)

    assert result.returncode != 0
    assert result.record is None, "modeldrop must not start"
    assert f"{models} is not writable by uid {os.geteuid()}" in result.stderr


def test_unwritable_staging_directory_stops_before_modeldrop(tmp_path: Path, mount) -> None:
    staging = tmp_path / "data" / "staging"
    staging.mkdir(parents=True)
    with read_only_dir(staging, mount):
        assert not writable(staging)
        result = run_start(tmp_path)

    assert result.returncode != 0 and result.record is None
    assert f"{staging} is not writable" in result.stderr


def test_staging_on_another_filesystem_stops_before_modeldrop(tmp_path: Path, mount) -> None:
    staging = tmp_path / "data" / "staging"
    staging.mkdir(parents=True)
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=staging)
    assert os.stat(staging).st_dev != os.stat(tmp_path).st_dev

    result = run_start(tmp_path)

    assert result.returncode != 0 and result.record is None
    assert "are on different filesystems" in result.stderr
    assert "publishing" in result.stderr or "rename" in result.stderr


def test_separate_mounts_of_one_filesystem_stop_before_modeldrop(tmp_path: Path, mount) -> None:
    """Two bind mounts of one filesystem share st_dev, yet rename(2) between them fails with EXDEV:
    the layout of a compose file that mounts models and staging separately."""
    elsewhere, staging = tmp_path / "elsewhere", tmp_path / "data" / "staging"
    elsewhere.mkdir()
    staging.mkdir(parents=True)
    mount("--bind", str(elsewhere), target=staging)
    assert os.stat(staging).st_dev == os.stat(tmp_path / "data").st_dev, "same device: stat alone passes"

    result = run_start(tmp_path)

    assert result.returncode != 0 and result.record is None
    assert "different mounts" in result.stderr
    assert list(staging.iterdir()) == [] and list((tmp_path / "data" / "models").iterdir()) == [], \
        "the rename probe must clean up after itself"


def test_falls_back_to_the_repo_venv_modeldrop(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(START, checkout / "scripts" / "start.sh")
    write_fake_modeldrop(checkout / ".venv" / "bin" / "modeldrop")

    result = run_start(tmp_path, "serve", "--port", "1234", script=checkout / "scripts" / "start.sh",
                       path=SYSTEM_PATH)

    assert result.returncode == 0, result.output
    assert result.execed
    assert result.record is not None and result.record["argv"] == ["serve", "--port", "1234"]


def test_without_modeldrop_anywhere_says_how_to_install_it(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(START, checkout / "scripts" / "start.sh")

    result = run_start(tmp_path, script=checkout / "scripts" / "start.sh", path=SYSTEM_PATH)

    assert result.returncode != 0
    assert "modeldrop is not installed" in result.stderr
    assert not (tmp_path / "data").exists()


def test_help_goes_straight_to_modeldrop(tmp_path: Path) -> None:
    result = run_start(tmp_path, "worker", "--help")
    assert result.returncode == 0, result.output
    assert result.record is not None and result.record["argv"] == ["worker", "--help"]
    assert not (tmp_path / "data").exists(), "--help must not create directories"


def test_any_other_command_runs_as_is(tmp_path: Path) -> None:
    result = run_start(tmp_path, "sh", "-c", 'echo "ran $0"', "inside")
    assert result.returncode == 0, result.output
    assert result.stdout == "ran inside\n"
    assert result.record is None and not (tmp_path / "data").exists()


@pytest.mark.parametrize("script", ["start.sh", "build-llama-server.sh"])
def test_scripts_are_shellcheck_clean_and_executable(script: str) -> None:
    path = START.parent / script
    assert os.access(path, os.X_OK), f"{path} must be executable"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    result = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
