"""cli/upload.py Attempts: how long the client waits between retries, and when it gives up."""

from __future__ import annotations

import pytest

from modeldrop.cli import tus
from modeldrop.cli.upload import Attempts, Retryable, Unreachable


def _attempts(retries: int) -> tuple[Attempts, list[float], list[str]]:
    waited: list[float] = []
    notices: list[str] = []
    policy = tus.RetryPolicy(attempts=retries, first_delay=1.0, max_delay=4.0)
    return Attempts(policy, waited.append, lambda: 0.0, notices.append), waited, notices


def test_waits_grow_and_the_last_failure_gives_up() -> None:
    attempts, waited, notices = _attempts(3)
    for _ in range(3):
        attempts.failed(Retryable("connection refused"))
    with pytest.raises(Unreachable, match="gave up after 3 retries: connection refused"):
        attempts.failed(Retryable("connection refused"))
    assert waited == [0.5, 1.0, 2.0]
    assert notices[0] == "connection refused; retry 1/3 in 0.5 s"


def test_progress_starts_the_count_again() -> None:
    attempts, waited, _ = _attempts(2)
    for _ in range(5):
        attempts.failed(Retryable("reset"))
        attempts.progressed()
    assert waited == [0.5] * 5


def test_a_servers_retry_after_is_honoured() -> None:
    attempts, waited, _ = _attempts(2)
    attempts.failed(Retryable("busy", wait_at_least=7.0))
    assert waited == [7.0]


def test_zero_retries_give_up_at_the_first_failure() -> None:
    attempts, waited, _ = _attempts(0)
    with pytest.raises(Unreachable):
        attempts.failed(Retryable("down"))
    assert waited == []
