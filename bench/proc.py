"""What /proc says about a process and the page cache, and a sampler thread for the duration of a run."""

from __future__ import annotations

import os
import threading

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name; index i is field i + 3 of proc(5)."""
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def minor_faults(pid: int) -> int:
    """Pages the process touched for the first time (field 10): memory taken and zeroed anew."""
    return int(_stat(pid)[7])


def reset_peak(pid: int) -> None:
    """From here on VmHWM is the peak since now, not since the process started (Linux ≥ 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as file:
        file.write("5")


def cached_kib() -> int:
    with open("/proc/meminfo") as file:
        for line in file:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    raise KeyError("Cached")


class Sampler:
    """Samples page cache and the server's VmRSS every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.cached_start = cached_kib()
        self.cached_max = self.cached_start
        self.rss_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.cached_max = max(self.cached_max, cached_kib())
            try:
                self.rss_max = max(self.rss_max, status_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def cache_growth_mib(self) -> float:
        return (self.cached_max - self.cached_start) / 1024
