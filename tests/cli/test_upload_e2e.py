"""`modeldrop upload`, `models` and `verify` as a user runs them: real CLI processes against a real server.

No mocks: the server is `modeldrop serve` (tests/conftest.py), the client runs as a subprocess, and faults
are real (SIGKILL of the client, SIGKILL and restart of the server).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import write_model, write_sparse_model, write_split_set
from tests.support.cli import (CLIENT_TIMEOUT, head_offset, installed_file, remembered_upload_url, run_cli, start_cli,
                               wait_for_offset)
from tests.support.models import sha256_of
from tests.support.processes import REPO, ServerProcess, wait_for

MIB = 1024 * 1024


@pytest.fixture
def big_model(tmp_path: Path) -> Path:
    """A valid, sparse GGUF big enough that 1 MiB PATCHes take a while: there is time to interrupt."""
    return write_sparse_model(tmp_path / "Sparse-8B-Q4_K_M.gguf", size_gib=0.3)


# ---------------------------------------------------------------- the happy path


def test_upload_installs_the_model_and_prints_its_status(server: ServerProcess, tmp_path: Path,
                                                         client_env: dict[str, str]) -> None:
    model = write_model(tmp_path / "Tiny-Q4_K_M.gguf")
    digest = sha256_of(model)

    result = run_cli(client_env, "upload", str(model), "--server", server.url, "--sha256", digest)

    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip()
    assert line.startswith("installed Tiny-Q4_K_M.gguf (llama, Q4_K_M, sha256 "), line
    assert digest.startswith(line.split("sha256 ")[1].rstrip("…)"))
    assert installed_file(server, "Tiny-Q4_K_M.gguf").read_bytes() == model.read_bytes()


def test_running_the_same_upload_again_only_reports_the_status(server: ServerProcess, tmp_path: Path,
                                                               client_env: dict[str, str]) -> None:
    model = write_model(tmp_path / "Again.gguf")
    first = run_cli(client_env, "upload", str(model), "--server", server.url)
    assert first.returncode == 0, first.stdout + first.stderr

    url = remembered_upload_url(client_env)

    again = run_cli(client_env, "upload", str(model), "--server", server.url)

    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("installed Again.gguf")
    assert "already uploaded" in again.stderr and "Again.gguf [" not in again.stderr  # no bytes sent again
    assert remembered_upload_url(client_env) == url


def test_no_wait_reports_the_state_the_server_is_in(server: ServerProcess, tmp_path: Path,
                                                    client_env: dict[str, str]) -> None:
    model = write_model(tmp_path / "Hasty.gguf")

    result = run_cli(client_env, "upload", str(model), "--server", server.url, "--no-wait")

    assert result.returncode == 0, result.stdout + result.stderr
    state = result.stdout.split()[0]
    assert state in ("queued", "verifying", "installed"), result.stdout


def test_a_split_set_uploads_every_shard(server: ServerProcess, tmp_path: Path,
                                         client_env: dict[str, str]) -> None:
    shards = write_split_set(tmp_path, "Split-Test", 3)

    result = run_cli(client_env, "upload", *map(str, shards), "--server", server.url, "--quiet")

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert all(line.startswith("installed ") for line in result.stdout.splitlines()), result.stdout
    for shard in shards:  # a set is installed as one folder named after it
        assert installed_file(server, f"Split-Test/{shard.name}").read_bytes() == shard.read_bytes()


def test_part_of_a_split_set_waits_without_hanging(server: ServerProcess, tmp_path: Path,
                                                   client_env: dict[str, str]) -> None:
    first, second = write_split_set(tmp_path, "Halves", 2)

    waiting = run_cli(client_env, "upload", str(first), "--server", server.url, "--quiet")
    completed = run_cli(client_env, "upload", str(second), "--server", server.url, "--quiet")

    assert waiting.returncode == 0, waiting.stdout + waiting.stderr
    assert waiting.stdout.startswith(f"waiting {first.name}: verified; its split set still needs shard(s) 00002")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("installed Halves/")


def test_models_and_verify_describe_an_installed_model(server: ServerProcess, tmp_path: Path,
                                                       client_env: dict[str, str]) -> None:
    model = write_model(tmp_path / "Listed-Q4_K_M.gguf")
    assert run_cli(client_env, "upload", str(model), "--server", server.url).returncode == 0

    table = run_cli(client_env, "models", "--server", server.url)
    as_json = run_cli(client_env, "models", "--server", server.url, "--json")
    verified = run_cli(client_env, "verify", "Listed-Q4_K_M.gguf", "--sha256", "--server", server.url)
    unknown = run_cli(client_env, "verify", "Nothing-Here.gguf", "--server", server.url)

    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["NAME", "KIND"]
    assert any(line.startswith("Listed-Q4_K_M.gguf") and "llama" in line for line in table.stdout.splitlines())
    assert "disk:" in table.stdout
    names = [entry["name"] for entry in json.loads(as_json.stdout)["models"]]
    assert "Listed-Q4_K_M.gguf" in names
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok Listed-Q4_K_M.gguf") and sha256_of(model) in verified.stdout
    assert unknown.returncode == 1


def test_memory_stays_flat_with_the_whole_file_in_one_patch(server: ServerProcess, tmp_path: Path,
                                                            client_env: dict[str, str]) -> None:
    model = write_sparse_model(tmp_path / "Flat-Q4_K_M.gguf", size_gib=0.5)
    # The client's own peak RSS, reported by the process itself as it exits: VmHWM, not getrusage's
    # ru_maxrss, which keeps the peak of the forked pytest process from before the exec (it read 175-517
    # MiB after the e2e tests had grown pytest, with the client itself at 24 MiB)
    measured = ("import re, runpy, sys\n"
                "sys.argv = ['modeldrop', *sys.argv[1:]]\n"
                "try:\n"
                "    runpy.run_module('modeldrop.cli.main', run_name='__main__')\n"
                "finally:\n"
                "    status = open('/proc/self/status').read()\n"
                "    print('maxrss_kib', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", measured, "upload", str(model), "--server", server.url, "-q"],
                            cwd=REPO, env=client_env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)

    assert result.returncode == 0, result.stdout + result.stderr
    peak_mib = int(result.stderr.split("maxrss_kib")[1].split()[0]) / 1024
    assert peak_mib < 100, f"the client peaked at {peak_mib:.0f} MiB sending a 512 MiB file"


# ---------------------------------------------------------------- refusals


def test_a_file_that_is_not_gguf_is_refused_with_the_servers_message(server: ServerProcess, tmp_path: Path,
                                                                     client_env: dict[str, str]) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_bytes(b"this is not a model\n" * 100)

    result = run_cli(client_env, "upload", str(fake), "--server", server.url)

    assert result.returncode == 1
    assert result.stdout.startswith("failed notes.gguf: "), result.stdout
    assert "GGUF" in result.stdout
    assert not installed_file(server, "notes.gguf").exists()


def test_an_installed_name_is_refused_not_overwritten(server: ServerProcess, tmp_path: Path,
                                                      client_env: dict[str, str]) -> None:
    model = write_model(tmp_path / "Taken.gguf")
    assert run_cli(client_env, "upload", str(model), "--server", server.url).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    different = write_model(other / "Taken.gguf", tensors=3)

    result = run_cli(client_env, "upload", str(different), "--server", server.url)

    assert result.returncode == 1
    assert result.stdout.startswith("failed Taken.gguf: "), result.stdout
    assert installed_file(server, "Taken.gguf").read_bytes() == model.read_bytes()


def test_a_wrong_token_is_a_clear_failure(start_server: Callable[..., ServerProcess], tmp_path: Path,
                                          client_env: dict[str, str]) -> None:
    server = start_server(token=["right-token"])
    model = write_model(tmp_path / "Guarded.gguf")

    refused = run_cli(client_env, "upload", str(model), "--server", server.url, "--token", "wrong-token")
    listing = run_cli(client_env, "models", "--server", server.url, "--token", "wrong-token")
    accepted = run_cli({**client_env, "MODELDROP_TOKEN": "right-token", "MODELDROP_SERVER": server.url},
                       "upload", str(model))

    assert refused.returncode == 1
    assert refused.stdout.startswith("failed Guarded.gguf: ") and "token" in refused.stdout, refused.stdout
    assert "retry" not in refused.stderr  # a 401 is final: no pointless retries
    assert listing.returncode == 1 and "token" in listing.stderr
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


# ---------------------------------------------------------------- interruptions


def test_a_killed_upload_resumes_from_the_servers_offset(server: ServerProcess, tmp_path: Path,
                                                         client_env: dict[str, str], big_model: Path) -> None:
    args = ("upload", str(big_model), "--server", server.url, "--chunk-size", "1MiB")
    first = start_cli(client_env, tmp_path / "first.err", *args)
    try:
        url = wait_for_offset(client_env, 8 * MIB, first)
    finally:
        first.kill()
        first.wait(10)
    before = wait_for(lambda: head_offset(url), 10, "the server's offset after the kill")

    second = run_cli(client_env, *args)

    assert 0 < before < big_model.stat().st_size
    assert second.returncode == 0, second.stdout + second.stderr
    assert "continuing from there" in second.stderr
    assert second.stdout.startswith("installed Sparse-8B-Q4_K_M.gguf")
    assert sha256_of(installed_file(server, big_model.name)) == sha256_of(big_model)


def test_the_upload_survives_a_server_crash_and_restart(server: ServerProcess, tmp_path: Path,
                                                        client_env: dict[str, str], big_model: Path) -> None:
    client = start_cli(client_env, tmp_path / "client.err", "upload", str(big_model), "--server", server.url,
                       "--chunk-size", "1MiB", "--retry-delay", "0.2", "--retries", "20")
    try:
        wait_for_offset(client_env, 8 * MIB, client)
        server.kill()
        time.sleep(1.0)  # the client meets a refused connection at least once
        server.start()
        stdout, _ = client.communicate(timeout=CLIENT_TIMEOUT)
    finally:
        if client.poll() is None:
            client.kill()
    stderr = (tmp_path / "client.err").read_text()

    assert client.returncode == 0, stdout + stderr
    assert "retry 1/20" in stderr and "connection refused" in stderr
    assert "continuing from there" in stderr  # from the server's offset, not from zero
    assert stdout.startswith("installed Sparse-8B-Q4_K_M.gguf")
    assert sha256_of(installed_file(server, big_model.name)) == sha256_of(big_model)

