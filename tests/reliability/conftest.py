"""Reliability scenarios report their figures here; they are printed once at the end of the run.

Each scenario calls `figures("name")` (the `figures` fixture) and fills in runs, faults, completed,
corrupt and lost as it goes, before asserting, so a failing scenario still prints what it saw
(tests/support/figures.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.figures import Figures

_FIGURES = pytest.StashKey[dict[str, Figures]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_FIGURES] = {}


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Callable[..., Figures]]:
    """figures(scenario, fault_kind) -> the Figures record of this test (runs=1), printed in the summary."""
    made: list[Figures] = []

    def make(scenario: str, fault_kind: str = "faults") -> Figures:
        record = Figures(scenario, runs=1, fault_kind=fault_kind)
        made.append(record)
        request.config.stash[_FIGURES][f"{request.node.nodeid}::{scenario}"] = record
        return record

    yield make
    for record in made:
        record.seconds = time.monotonic() - record.started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    records = config.stash.get(_FIGURES, {})
    if not records:
        return
    terminalreporter.section("reliability figures")
    for record in records.values():
        terminalreporter.write_line(record.line())
