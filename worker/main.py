"""`modeldrop worker`: RQ worker processes for the finalize queue, visible to `rq info` and rq-dashboard."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys

from modeldrop.server.logs import configure_logging
from modeldrop.server.directories import check_directories
from modeldrop.server.settings import Settings, SettingsError, add_arguments as add_setting_arguments

log = logging.getLogger("modeldrop.worker")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_setting_arguments(parser, command)
    parser.add_argument("--burst", action="store_true", default=False,
                        help="finish the jobs queued now, then exit (for scripts and tests)")


_PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """SIGKILL this process when `parent` dies (Linux's PR_SET_PDEATHSIG), or now if it already has.

    RQ forks a scheduler and a work horse per job. A child that outlives a killed worker keeps the
    worker's Redis socket (inherited by fork) open, so Redis keeps the dead worker's blocked BLMOVE and
    hands it the next job, which then sits in RQ's intermediate list where no one reads it.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("PR_SET_PDEATHSIG failed (errno %d): children may outlive a killed worker", ctypes.get_errno())
    if os.getppid() != parent:  # it died before the call above
        os.kill(os.getpid(), signal.SIGKILL)


def _children_die_with_this_process() -> None:
    forking = [0]
    os.register_at_fork(before=lambda: forking.__setitem__(0, os.getpid()),
                        after_in_child=lambda: die_with(forking[0]))


def work(settings: Settings, burst: bool, parent: int | None = None) -> None:
    from rq import Queue, Worker

    from modeldrop.server.components import build, redis_client
    from modeldrop.worker import finalize

    if parent is not None:  # one of --workers N: dies with `modeldrop worker`
        die_with(parent)
    _children_die_with_this_process()
    configure_logging(settings.log_level)
    assert settings.redis_url is not None  # run() refuses to start without it
    finalize.use(build(settings))  # once: RQ's work horses are forked from this process and inherit them
    # RQ's own connection: the same configuration, a client of its own (RQ lengthens its socket timeout)
    connection = redis_client(settings.redis_url)
    queue = Queue(finalize.QUEUE_NAME, connection=connection)
    Worker([queue], connection=connection).work(burst=burst, with_scheduler=True,
                                                logging_level=settings.log_level.upper())


def run(command: str, args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_args(args, os.environ)
        if not settings.redis_url:
            raise SettingsError("the worker needs Redis: pass --redis-url or set REDIS_URL "
                                "(without Redis, `modeldrop serve` finalizes uploads itself)")
        check_directories(settings)
    except SettingsError as exc:
        print(f"modeldrop worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from modeldrop.worker.finalize import QUEUE_NAME

    # describe() names Redis with its password hidden: never log settings.redis_url itself
    log.info("finalize worker(s): %d on queue %s (%s)", settings.workers, QUEUE_NAME, settings.describe())
    if settings.workers == 1:
        work(settings, args.burst)
        return 0
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=work, args=(settings, args.burst, os.getpid()))
                for _ in range(settings.workers)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)
