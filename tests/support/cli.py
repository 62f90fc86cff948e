"""The `modeldrop` command run as a user runs it (a subprocess), and what its state file says.

    result = run_cli(client_env, "upload", str(model), "--server", server.url)   # waits; CompletedProcess
    client = start_cli(client_env, stderr_path, "upload", ...)                  # in the background
    url = wait_for_offset(client_env, 8 * MIB, client)                          # once the server holds 8 MiB
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.processes import REPO, ServerProcess, wait_for
from tests.support.tus import TusClient

CLIENT_TIMEOUT = 240


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "modeldrop.cli.main", *args]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv(*args), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT)


def start_cli(env: dict[str, str], stderr_path: Path, *args: str) -> subprocess.Popen[str]:
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen(cli_argv(*args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                text=True)


def remembered_upload(env: dict[str, str]) -> dict[str, str] | None:
    """The upload the client wrote into its state file (url, status_url), once it has created it."""
    try:
        uploads = json.loads(Path(env["MODELDROP_STATE_FILE"]).read_text())["uploads"]
    except (OSError, ValueError, KeyError):
        return None
    entries = [entry for entry in uploads.values() if "url" in entry]
    return entries[0] if entries else None


def remembered_upload_url(env: dict[str, str]) -> str | None:
    entry = remembered_upload(env)
    return entry["url"] if entry else None


def head_offset(upload_url: str) -> int | None:
    """The server's Upload-Offset from a tus HEAD, or None while it cannot answer.

    Only once the client is gone: a HEAD asks a running PATCH to let go of the upload (lock release).
    """
    return TusClient(timeout=5).try_offset(upload_url)


def status_offset(status_url: str) -> int | None:
    """The offset in /api/uploads/<id>: readable while the client sends, without disturbing it."""
    parts = urlsplit(status_url)
    status = TusClient(f"{parts.scheme}://{parts.netloc}", timeout=5).try_status(status_url)
    return int(status["offset"]) if status is not None else None


def wait_for_offset(env: dict[str, str], at_least: int, client: subprocess.Popen[str]) -> str:
    """Wait until the running client's upload holds `at_least` bytes on the server; its upload URL."""
    def reached() -> str | None:
        assert client.poll() is None, "the client finished before it could be interrupted: use a bigger file"
        entry = remembered_upload(env)
        offset = status_offset(entry["status_url"]) if entry else None
        return entry["url"] if entry and offset is not None and offset >= at_least else None
    url: str = wait_for(reached, 60, f"the upload to reach {at_least} bytes", interval=0.02)
    return url


def installed_file(server: ServerProcess, name: str) -> Path:
    return server.models_dir / name
