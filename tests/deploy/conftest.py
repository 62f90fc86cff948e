"""Fixtures of the deployment tests: real mounts, and the package built and installed as a user does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.support import Installed, clean_checkout, checked, venv


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (scripts/setup.sh installs it)")
    root = tmp_path_factory.mktemp("package")
    checkout = clean_checkout(root / "checkout")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "wheels"), str(checkout)]
    checked(subprocess.run(pip, cwd=root, capture_output=True, text=True, timeout=600))
    [wheel] = (root / "wheels").glob("modeldrop-*.whl")
    full, uploader = venv(root / "full"), venv(root / "uploader")
    checked(subprocess.run([str(full / "bin" / "pip"), "install", "-q", str(wheel)], cwd=root, capture_output=True,
                           text=True, timeout=600))
    checked(subprocess.run([str(uploader / "bin" / "pip"), "install", "-q", str(checkout / "cli")], cwd=root,
                           capture_output=True, text=True, timeout=600))
    yield Installed(checkout, wheel, full, uploader)
