"""Running an asyncio scenario from a synchronous test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_scenario(scenario: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60.0) -> T:
    """asyncio.run in a thread of its own, returning the scenario's result: the browser tests' Playwright
    keeps a loop in the main thread, where asyncio.run would refuse to start."""
    errors: list[BaseException] = []
    results: list[T] = []

    def target() -> None:
        try:
            results.append(asyncio.run(scenario()))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "the scenario did not finish"
    return results[0]
