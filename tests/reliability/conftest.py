"""Reliability scenarios report their figures here; they are printed once at the end of the run.

Each scenario calls `figures("name")` (the `figures` fixture) and fills in runs, faults, completed,
corrupt and lost as it goes, before asserting, so a failing scenario still prints what it saw.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import pytest

_FIGURES = pytest.StashKey[dict[str, "Figures"]]()


@dataclasses.dataclass
class Figures:
    scenario: str
    runs: int = 0
    faults: int = 0
    fault_kind: str = "faults"
    completed: int = 0
    corrupt: int = 0
    lost: int = 0
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def line(self) -> str:
        note = f"  ({'; '.join(self.notes)})" if self.notes else ""
        return (f"{self.scenario}: runs={self.runs} {self.fault_kind}={self.faults} completed={self.completed} "
                f"corrupt={self.corrupt} lost={self.lost} time={self.seconds:.0f}s{note}")


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
