"""curl alone uploads a model with Resumable Uploads for HTTP: the README's commands, run as written with the
real curl binary, including a resume after the connection dropped mid-request."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.models import assert_installed
from tests.support.processes import REPO, ServerProcess
from tests.support.rufh import RufhClient
from tests.support.tus import stored_size


def readme_block(marker: str) -> str:
    """The README's ```sh block whose first line is `marker`."""
    readme = (REPO / "README.md").read_text()
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL):
        if block.startswith(marker):
            return str(block)
    raise AssertionError(f"README has no sh block starting with {marker!r}")


def steps(block: str) -> dict[str, str]:
    """The block's numbered steps (`# 1. ...` up to the next), after its first line of settings."""
    found: dict[str, str] = {}
    current = None
    for line in block.splitlines()[1:]:
        numbered = re.match(r"# (\d)\. ", line)
        if numbered:
            current = numbered.group(1)
        if current is not None:
            found[current] = found.get(current, "") + line + "\n"
    return found


@pytest.fixture
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.skip("curl is not installed")
    return found


def bash(script: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_curl_uploads_with_the_readme_commands_and_resumes(
        start_server: Callable[..., ServerProcess], model: Path, tmp_path: Path, curl: str) -> None:
    server = start_server(fsync=False)
    block = readme_block("SERVER=")
    numbered = steps(block)
    assert sorted(numbered) == ["1", "2", "3", "4"]
    env = {"PATH": str(Path(curl).parent) + ":/usr/bin:/bin", "SERVER": server.url, "FILE": str(model),
           "NAME": model.name, "V": "Upload-Draft-Interop-Version: 9"}
    # the block's first line sets SERVER, FILE, NAME and V for a reader; the test gives them instead
    created = bash(numbered["1"] + 'echo "$LOCATION"', env)
    assert created.returncode == 0, created.stderr
    location = created.stdout.strip().splitlines()[-1]
    assert "/uploads/" in location
    env["LOCATION"] = location
    # the link drops a few MiB into the first send: curl gives up, the server keeps what arrived
    cut = bash(numbered["3"].replace("curl -sf", "curl -sf --limit-rate 4M -m 1.5", 1), {**env, "OFFSET": "0"})
    assert cut.returncode != 0
    kept = RufhClient(server.url).offset(location)  # the dropped request's bytes, durable once it is ended
    assert 0 < kept < model.stat().st_size
    assert stored_size(server, location) == kept
    resumed = bash(numbered["2"] + 'echo "offset $OFFSET"\n' + numbered["3"] + numbered["4"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"offset {kept}" in resumed.stdout
    assert_installed(server, location, model)


def test_curl_sends_a_whole_model_in_one_request_and_sees_the_104(
        start_server: Callable[..., ServerProcess], model: Path, curl: str) -> None:
    server = start_server(fsync=False)
    block = readme_block("curl -si -X POST")
    env = {"PATH": str(Path(curl).parent) + ":/usr/bin:/bin", "SERVER": server.url, "FILE": str(model),
           "NAME": "whole-" + model.name, "V": "Upload-Draft-Interop-Version: 9"}
    sent = bash(block, env)
    assert sent.returncode == 0, sent.stderr
    heads = re.findall(r"^HTTP/1\.1 (\d{3})", sent.stdout, flags=re.MULTILINE)
    assert heads == ["100", "104", "201"], sent.stdout[:2000]
    interim_location = re.search(r"^Location: (\S+)", sent.stdout, flags=re.MULTILINE)
    assert interim_location is not None
    assert_installed(server, interim_location.group(1), model)
