"""Helpers for the deployment tests: run scripts/start.sh for real, with a recording `modeldrop` on PATH."""

from __future__ import annotations

import json
import os
import shutil
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
    """The test process's environment without anything that configures modeldrop or points Python at the checkout."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MODELDROP_") and key not in ("REDIS_URL", "PYTHONPATH", "VIRTUAL_ENV")}
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


@dataclass
class Installed:
    checkout: Path
    wheel: Path
    full: Path  # venv with the modeldrop wheel and its dependencies
    uploader: Path  # venv with the uploader-only distribution

    def run(self, venv: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=self.checkout.parent,
                              env=clean_env(PATH=f"{venv / 'bin'}:{SYSTEM_PATH}"), capture_output=True, text=True,
                              timeout=timeout)


def checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def clean_checkout(target: Path) -> Path:
    """The tracked files of the work tree, as a fresh clone has them (no build output, no node_modules)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if name.startswith(("tests/", "bench/")) or not (REPO / name).is_file():
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    assert not (target / "web" / "dist").exists()
    return target


def venv(path: Path) -> Path:
    checked(subprocess.run([sys.executable, "-m", "venv", str(path)], capture_output=True, text=True, timeout=120))
    return path
