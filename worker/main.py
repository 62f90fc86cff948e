"""`modeldrop worker`: RQ worker processes for the finalize queue, visible to `rq info` and rq-dashboard."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys

from server.finalizer import QUEUE_NAME
from server.logs import configure_logging
from server.directories import check_directories
from server.settings import Settings, SettingsError, add_arguments as add_setting_arguments

log = logging.getLogger("modeldrop.worker")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_setting_arguments(parser, command)
    parser.add_argument("--burst", action="store_true", default=False,
                        help="finish the jobs queued now, then exit (for scripts and tests)")


def work(settings: Settings, burst: bool) -> None:
    import redis
    from rq import Queue, Worker

    from worker.finalize import configure

    configure_logging(settings.log_level)
    configure(settings)
    connection = redis.Redis.from_url(settings.redis_url)  # type: ignore[arg-type]
    queue = Queue(QUEUE_NAME, connection=connection)
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
    log.info("finalize worker(s): %d on queue %s at %s (%s)", settings.workers, QUEUE_NAME, settings.redis_url,
             settings.describe())
    if settings.workers == 1:
        work(settings, args.burst)
        return 0
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=work, args=(settings, args.burst)) for _ in range(settings.workers)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)
