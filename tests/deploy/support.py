"""Helpers for the deployment tests: run scripts/start.sh for real, with a recording `modeldrop` on PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START = REPO / "scripts" / "start.sh"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that configures modeldrop."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MODELDROP_") and key != "REDIS_URL"}
    env.update(extra)
    return env


def write_fake_modeldrop(path: Path) -> Path:
    """A `modeldrop` that records its argv, pid and MODELDROP_* environment as JSON, then exits 0.

    It is the seam of the entrypoint tests: the real one would start a server.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        record = {{"argv": sys.argv[1:], "pid": os.getpid(), "cwd": os.getcwd(),
                   "env": {{k: v for k, v in os.environ.items() if k.startswith("MODELDROP_")}}}}
        with open(os.environ["FAKE_MODELDROP_RECORD"], "w") as out:
            json.dump(record, out)
        """))
    path.chmod(0o755)
    return path


@dataclass
class StartResult:
    returncode: int
    pid: int
    stdout: str
    stderr: str
    record: dict[str, Any] | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def execed(self) -> bool:
        """modeldrop ran in start.sh's own process (exec), not as a child."""
        return self.record is not None and self.record["pid"] == self.pid


def run_start(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
              script: Path = START, path: str | None = None) -> StartResult:
    """Runs start.sh ARGS with the recording modeldrop first on PATH (unless `path` is given)."""
    fake_bin = tmp_path / "fake-bin"
    write_fake_modeldrop(fake_bin / "modeldrop")
    record = tmp_path / "modeldrop-record.json"
    record.unlink(missing_ok=True)
    full_env = clean_env(PATH=path if path is not None else f"{fake_bin}:{SYSTEM_PATH}",
                         FAKE_MODELDROP_RECORD=str(record), **dict(env or {}))
    proc = subprocess.Popen([str(script), *args], cwd=cwd or tmp_path, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=60)
    data = json.loads(record.read_text()) if record.exists() else None
    return StartResult(proc.returncode, proc.pid, stdout, stderr, data)


@contextmanager
def read_only_dir(directory: Path, mount: Any) -> Iterator[None]:
    """Makes directory unwritable for this process: chmod 0555, or as root (which chmod does not stop)
    a read-only bind mount of the directory onto itself."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    mount("--bind", str(directory), target=directory)
    mount("-o", "remount,bind,ro", target=directory)
    yield


def writable(directory: Path) -> bool:
    probe = directory / ".write-check"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True
