"""The production code passes ruff (pyflakes, pycodestyle, bugbear) and mypy, as part of the test run,
and is one package: every folder is declared, and code and tests import it by its installed name."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ["server", "worker", "cli"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", "--select", "E,F,B", "--line-length", "120", "--no-cache", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    # mypy cannot follow setup.cfg's package_dir, so it reads the folders through links named as installed
    (tmp_path / "modeldrop").mkdir()
    for folder in CODE:
        (tmp_path / "modeldrop" / folder).symlink_to(REPO / folder)
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "setup.cfg"), "--no-incremental",
                             "--namespace-packages", "--explicit-package-bases", "modeldrop"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout, result.stdout


def declared_packages() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    folders = dict(line.split(" = ") for line in parser["options"]["package_dir"].strip().splitlines())
    return {package: folders.get(package) or folders[package.rsplit(".", 1)[0]] + "/" + package.rsplit(".", 1)[1]
            for package in parser["options"]["packages"].split()}


def test_every_code_folder_is_a_declared_package() -> None:
    declared = {folder for package, folder in declared_packages().items() if package != "modeldrop.web"}
    folders = {str(init.parent.relative_to(REPO)) for folder in CODE for init in (REPO / folder).rglob("*.py")
               if "__pycache__" not in init.parts}
    assert folders == declared  # a folder missing here installs nothing, and its imports fail only once installed
    for folder in folders:
        assert (REPO / folder / "__init__.py").is_file(), folder


def test_code_and_tests_import_modeldrop_by_its_installed_name() -> None:
    # `import server` works only from the checkout's root, and would load a second copy of every module
    bare = re.compile(r"^\s*(from|import) (server|worker|cli)\b|\"-m\", \"(server|worker|cli)\.", re.MULTILINE)
    offenders = [str(path.relative_to(REPO)) for top in (*CODE, "tests", "bench", "docker")
                 for path in (REPO / top).rglob("*.py")
                 if "node_modules" not in path.parts and "scratch" not in path.parts and bare.search(path.read_text())]
    assert offenders == []
