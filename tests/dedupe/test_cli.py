"""`modeldrop upload` of a file the server already has: it asks before sending, and is done in well under a second
when the digest is known. It hashes only when asked (--sha256 given, --hash) or when the server has a file of the
same size to compare with."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from modeldrop.cli import tus
from modeldrop.cli.digest import lookup_candidates, worth_hashing
from tests.support.cli import run_cli
from tests.support.models import assert_installed
from tests.support.processes import ServerProcess
from tests.support.proxy import Proxy
from tests.support.tus import TusClient

REQUESTS_ONLY = 64 * 1024  # a few requests' headers: no file bytes


def timed_upload(env: dict[str, str], *args: str) -> tuple[float, str, str]:
    started = time.monotonic()
    result = run_cli(env, "upload", *args)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    return elapsed, result.stdout, result.stderr


def test_an_installed_file_is_done_at_once_with_its_digest(server: ServerProcess, model: Path, digest: str,
                                                          copy_of: Callable[[str], Path], client_env: dict[str, str],
                                                          proxy: Callable[..., Proxy]) -> None:
    assert_installed(server, TusClient(server.url).upload_file(model), model)
    relay = proxy(server)

    # this machine never uploaded it (empty state file): the same name is installed already
    elapsed, stdout, stderr = timed_upload(client_env, str(model), "--sha256", digest, "--server", relay.url)
    assert stdout.startswith(f"installed {model.name}") and "already installed" in stderr
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    # and under another name, it is installed by link
    renamed = copy_of("Renamed-Q4_K_M.gguf")
    elapsed, stdout, stderr = timed_upload(client_env, f"{renamed}={digest}", "--server", relay.url)
    assert stdout.startswith(f"installed {renamed.name}") and "nothing to send" in stderr
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert relay.forwarded < REQUESTS_ONLY, f"{relay.forwarded} bytes sent"
    linked = os.stat(server.models_dir / renamed.name)
    assert linked.st_ino == os.stat(server.models_dir / model.name).st_ino


def test_without_a_digest_it_hashes_only_what_the_server_could_have(server: ServerProcess, model: Path,
                                                                    digest: str, copy_of: Callable[[str], Path],
                                                                    client_env: dict[str, str],
                                                                    proxy: Callable[..., Proxy]) -> None:
    relay = proxy(server)
    # an empty server has no file of this size: nothing is hashed, the file is sent
    _, stdout, stderr = timed_upload(client_env, str(model), "--server", relay.url)
    assert stdout.startswith(f"installed {model.name}") and "sha256)" not in stderr
    sent = relay.forwarded
    assert sent >= model.stat().st_size

    # a copy under another name, from another machine: the server has a file of its size, so the client hashes
    # it, and the creation with the digest installs it by link
    renamed = copy_of("Copy-Q4_K_M.gguf")
    _, stdout, stderr = timed_upload(client_env, str(renamed), "--server", relay.url)
    assert "hashing this one to compare" in stderr and "nothing to send" in stderr
    assert stdout.startswith(f"installed {renamed.name}")
    assert relay.forwarded - sent < REQUESTS_ONLY
    status = TusClient(server.url).get_json(f"/api/models/{renamed.name}")
    assert status["sha256"] == digest


def test_hash_flag_declares_the_digest(server: ServerProcess, model: Path, digest: str,
                                       client_env: dict[str, str]) -> None:
    _, stdout, stderr = timed_upload(client_env, str(model), "--hash", "--server", server.url)
    assert f"{model.name} (sha256)" in stderr
    assert stdout.startswith(f"installed {model.name}")
    [upload] = [path.stem for path in (server.staging_dir / "uploads").glob("*.info")]
    assert TusClient(server.url).status(upload)["sha256_expected"] == digest


def test_what_is_worth_hashing_and_what_the_server_said() -> None:
    installed = {"sha256": "ab" * 32, "where": "installed", "name": "other.gguf"}
    upload_here = {"sha256": "ab" * 32, "where": "upload", "name": "x.gguf", "offset": 5}
    upload_elsewhere = {**upload_here, "name": "y.gguf"}
    assert worth_hashing([installed], "x.gguf")  # linked under the new name, or answered as installed
    assert worth_hashing([upload_here], "x.gguf")  # resumed
    assert not worth_hashing([upload_elsewhere], "x.gguf")  # another name's upload is never continued
    assert not worth_hashing([], "x.gguf")
    assert lookup_candidates({"candidates": [installed, "junk"]}) == [installed]
    assert lookup_candidates("<html>") == [] and lookup_candidates({"candidates": None}) == []
    answer = b'{"match": "linked", "message": "installed as x.gguf"}'
    assert tus.match_message(answer, "linked") == "installed as x.gguf"
    assert "nothing to send" in tus.match_message(b"", "installed")
