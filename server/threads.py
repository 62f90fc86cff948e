"""Threads that move an upload's bytes yield the CPU to the event loop.

On a machine with few cores, the threads that receive, write and hash bodies can outnumber the cores many
times over (three per O_DIRECT body). At the same priority the scheduler shares a core among them evenly,
so the event loop, one thread among dozens, waited its turn for every HEAD and every new request. Running
them below the loop's priority (a higher nice value: CFS gives a nice-10 thread about a tenth of a nice-0
thread's share) keeps the loop answering at once; the bytes still get every cycle the loop leaves idle.
"""

from __future__ import annotations

import contextlib
import os
import threading

BODY_NICE = 10  # relative to the process: added to its own nice value


def yield_to_the_loop() -> None:
    """Lowers the calling thread's CPU priority for good: only the thread's own work is affected, and only
    privileged processes may raise it again, so call it in threads that only ever move bodies."""
    with contextlib.suppress(OSError):  # not Linux, or a sandbox that refuses it: same priority as before
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BODY_NICE))
