"""The test tree's layout holds: shared test code lives in tests/support, and nothing imports a test module.

- no module under tests/ imports a `test_*` module (a test module is run, not used);
- a test module imports from tests/support, the model generator tests/ggufgen.py, or helpers beside it in
  its own directory (its conftest.py, tests/deploy/support.py), never another directory's helpers;
- tests/support imports nothing from the rest of tests/ but tests/ggufgen.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SHARED = {"tests.ggufgen"}  # the GGUF generator: shared by every directory (and bench/), not only tests/support


def imported_modules(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every `tests...` module the source imports; `from a.b import c` yields a.b.c when
    c is a module, a.b otherwise. package: the importing module's package, for relative imports."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "tests" or name.startswith("tests."):
                yield node.lineno, name


def _is_module(name: str) -> bool:
    path = TESTS.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def problems_of(source: str, module: str) -> list[str]:
    """What breaks the layout in `source`, the text of the module named `module` (tests.x.test_y)."""
    package, name = module.rsplit(".", 1)
    problems = []
    for line, imported in imported_modules(source, package):
        where = f"{module}:{line} imports {imported}"
        last = imported.rsplit(".", 1)[-1]
        if last.startswith("test_"):
            problems.append(f"{where}, a test module: move what it shares to tests/support")
        elif imported in SHARED or imported == "tests.support" or imported.startswith("tests.support."):
            continue
        elif package == "tests.support":
            problems.append(f"{where}: tests/support may only use itself and tests/ggufgen.py")
        elif name.startswith("test_") and imported.rsplit(".", 1)[0] != package:
            problems.append(f"{where}, a helper of another directory: shared code goes to tests/support")
    return problems


def python_files() -> Iterator[Path]:
    for path in sorted(TESTS.rglob("*.py")):
        if not {"node_modules", "js", "artifacts", "__pycache__"} & set(path.relative_to(TESTS).parts):
            yield path


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)


def test_layout_no_test_imports_another_test_module_or_another_directorys_helpers() -> None:
    problems = [problem for path in python_files()
                for problem in problems_of(path.read_text(), module_name(path))]
    assert problems == []


def test_layout_check_finds_what_it_forbids() -> None:
    """The check above can fail: each kind of import it forbids is found, the allowed ones are not."""
    forbidden = {
        "tests.reliability.test_power_cut": "from tests.reliability.test_server_kills import RETRY_DELAYS",
        "tests.reliability.test_lock_release": "from tests.e2e.test_real_clients import assert_installed",
        "tests.server.test_x": "from tests.worker import uploads",
        "tests.e2e.test_y": "import tests.reliability.conftest",
        "tests.support.models": "from tests.worker.uploads import ModelsWatcher",
        "tests.cli.conftest": "from .test_upload_e2e import run_cli",
    }
    for module, source in forbidden.items():
        assert len(problems_of(source, module)) == 1, (module, source)
    allowed = {
        "tests.server.test_x": "from tests.support.tus import TusClient\nfrom tests.ggufgen import write_model",
        "tests.deploy.test_y": "from tests.deploy.support import REPO\nfrom tests.deploy.conftest import x",
        "tests.browser.test_z": "from .conftest import card\nfrom tests.support import models",
        "tests.support.models": "from tests.support.processes import wait_for\nimport json",
    }
    for module, source in allowed.items():
        assert problems_of(source, module) == [], (module, source)


def test_layout_scenarios_run_through_run_scenario_not_asyncio_run() -> None:
    """asyncio.run in the test process's main thread fails once the browser tests left Playwright's loop there
    (CI met it twice); tests/support/loop.run_scenario runs a scenario in a thread of its own."""
    calls = [f"{path.relative_to(TESTS)}:{node.lineno}" for path in TESTS.rglob("*.py")
             if "node_modules" not in path.parts and path.name != "loop.py"
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "asyncio"]
    assert calls == []
