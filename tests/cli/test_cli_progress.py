"""cli/progress.py: the bar's text, and when it is written on a terminal and in a log."""

from __future__ import annotations

import io

import pytest

from modeldrop.cli import progress


@pytest.mark.parametrize(("seconds", "expected"), [(None, "--"), (-1, "--"), (0, "0s"), (59.9, "59s"),
                                                   (61, "1m01s"), (3725, "1h02m"), (1e9, "--")])
def test_format_duration(seconds: float | None, expected: str) -> None:
    assert progress.format_duration(seconds) == expected


def test_render_shows_bytes_percent_speed_and_eta() -> None:
    line = progress.render("m.gguf", 512 * 1024**2, 1024**3, speed=64 * 1024**2, bar_width=10)
    assert line == "m.gguf [#####     ]  50.0%  512.0 MiB / 1.0 GiB  64.0 MiB/s  ETA 8s"


def test_render_without_a_speed_yet() -> None:
    assert progress.render("m.gguf", 0, 100, speed=None, bar_width=4).endswith("--/s  ETA --")


def test_render_of_an_empty_file_is_complete() -> None:
    assert "100.0%" in progress.render("m.gguf", 0, 0, speed=None)


class FakeStream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def _drive(terminal: bool, quiet: bool = False) -> str:
    now = [0.0]
    stream = FakeStream(terminal)
    bar = progress.Progress(stream, "m.gguf", 1000, quiet=quiet, clock=lambda: now[0])
    bar.reset(0)
    for _ in range(100):
        now[0] += 0.05
        bar.advance(10)
    bar.finish()
    return stream.getvalue()


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    output = _drive(terminal=True)
    assert output.count("\n") == 1 and output.endswith("\n")
    assert output.count("\r") > 5
    assert "100.0%" in output.rsplit("\r", 1)[-1]


def test_a_log_gets_a_plain_line_per_tenth() -> None:
    lines = _drive(terminal=False).splitlines()
    assert "\r" not in "".join(lines)
    assert len(lines) == 11  # 0%, 10%, ... 100%, with the last not repeated by finish()
    assert "100.0%" in lines[-1] and "100.0%" not in lines[-2]


def test_quiet_writes_nothing() -> None:
    assert _drive(terminal=True, quiet=True) == ""


def test_messages_do_not_tear_the_bar() -> None:
    stream = FakeStream(terminal=True)
    bar = progress.Progress(stream, "m.gguf", 100, clock=lambda: 0.0)
    bar.reset(10)
    bar.message("retrying")
    assert stream.getvalue().endswith("\nretrying\n")


def test_quiet_also_silences_messages() -> None:
    stream = FakeStream(terminal=False)
    progress.Progress(stream, "m.gguf", 100, quiet=True).message("retrying")
    assert stream.getvalue() == ""


def test_a_bar_never_started_is_never_drawn() -> None:
    stream = FakeStream(terminal=True)
    progress.Progress(stream, "m.gguf", 100).finish()
    assert stream.getvalue() == ""
