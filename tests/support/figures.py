"""The figures a reliability scenario reports: one line each, printed at the end of the run.

A scenario gets its record from the `figures` fixture (tests/reliability/conftest.py, which prints them)
and fills in runs, faults, completed, corrupt and lost as it goes, before asserting, so a failing
scenario still prints what it saw.
"""

from __future__ import annotations

import dataclasses
import time


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
