"""The progress bar on stderr: redrawn in place on a terminal, an occasional plain line in a log.

`render` is pure (numbers in, a line out); `Progress` only keeps time and decides when to write.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import TextIO

from modeldrop.cli.tus import format_size

# The speed is measured over this many recent seconds: long enough to be steady, short enough to
# follow a link that slows down.
SPEED_WINDOW_SECONDS = 10.0
TERMINAL_REDRAW_SECONDS = 0.2
# Without a terminal (CI logs, nohup), a line at most this often, plus one per tenth of the file.
LOG_LINE_SECONDS = 30.0


def format_duration(seconds: float | None) -> str:
    """1h02m, 4m05s, 12s; '--' while unknown."""
    if seconds is None or seconds < 0 or seconds != seconds or seconds > 99 * 3600:
        return "--"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def render(name: str, done: int, total: int, speed: float | None, bar_width: int = 24) -> str:
    """'model.gguf [#####     ]  42.0%  2.1 GiB / 5.0 GiB  110.3 MiB/s  ETA 27s'."""
    fraction = 1.0 if total <= 0 else min(1.0, done / total)
    filled = int(fraction * bar_width)
    eta = (total - done) / speed if speed else None
    rate = f"{format_size(speed)}/s" if speed else "--/s"
    bar = "#" * filled + " " * (bar_width - filled)
    return (f"{name} [{bar}] {fraction * 100:5.1f}%  {format_size(done)} / {format_size(total)}  "
            f"{rate}  ETA {format_duration(eta)}")


class Progress:
    """Tracks one file's bytes; `advance` is called for every block sent, `reset` after a resume."""

    def __init__(self, stream: TextIO, name: str, total: int, quiet: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self._name = name
        self._total = total
        self._quiet = quiet
        self._clock = clock
        self._terminal = stream.isatty()
        self._done = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._last_write = float("-inf")
        self._last_logged_tenth = -1
        self._last_logged_done = -1
        self._line_open = False
        self._started = False

    def reset(self, done: int) -> None:
        """The server's offset is the truth: after a retry or resume, count from there."""
        self._done = done
        self._started = True
        self._samples.clear()
        self._draw(force=True)

    def advance(self, count: int) -> None:
        self._done += count
        self._started = True
        self._draw(force=False)

    def finish(self) -> None:
        """Draw the final state once more (unless a log already has it) and end the bar's line.

        A bar never started (nothing was left to send) stays undrawn.
        """
        if self._started and (self._terminal or self._last_logged_done != self._done):
            self._draw(force=True)
        if self._line_open:
            self._stream.write("\n")
            self._stream.flush()
            self._line_open = False

    def message(self, text: str) -> None:
        """A line of its own (a retry notice) without tearing the bar; nothing when quiet."""
        if self._quiet:
            return
        if self._line_open:
            self._stream.write("\n")
            self._line_open = False
        self._stream.write(text + "\n")
        self._stream.flush()

    def _speed(self, now: float) -> float | None:
        self._samples.append((now, self._done))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW_SECONDS:
            self._samples.popleft()
        first_time, first_done = self._samples[0]
        if now - first_time < 0.5:
            return None
        return max(0.0, (self._done - first_done) / (now - first_time))

    def _draw(self, force: bool) -> None:
        if self._quiet:
            return
        now = self._clock()
        speed = self._speed(now)
        if self._terminal:
            if force or now - self._last_write >= TERMINAL_REDRAW_SECONDS:
                self._stream.write("\r\x1b[K" + render(self._name, self._done, self._total, speed))
                self._stream.flush()
                self._line_open = True
                self._last_write = now
            return
        tenth = 10 if self._total <= 0 else self._done * 10 // self._total
        if force or tenth > self._last_logged_tenth or now - self._last_write >= LOG_LINE_SECONDS:
            self._stream.write(render(self._name, self._done, self._total, speed) + "\n")
            self._stream.flush()
            self._last_write = now
            self._last_logged_tenth = tenth
            self._last_logged_done = self._done
