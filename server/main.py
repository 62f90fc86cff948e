"""`modeldrop serve`: validates settings, then runs uvicorn (uvloop + httptools) with graceful shutdown.

On SIGTERM or SIGINT the server stops accepting, tells running uploads to save their bytes and answer
503 (clients resume from the durable offset), and exits within --shutdown-timeout seconds.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
from typing import Any

import uvicorn

from modeldrop.server.bounded_head import HeadLimits
from modeldrop.server.directories import check_directories
from modeldrop.server.libc import keep_freed_heap
from modeldrop.server.logs import configure_logging
from modeldrop.server.settings import Settings, SettingsError, add_arguments as add_setting_arguments
from modeldrop.server.socket_body import SocketBodyProtocol

log = logging.getLogger("modeldrop.main")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_setting_arguments(parser, command)


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, plus: tell the app first, so long PATCH bodies stop and save instead of hanging."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        app = getattr(self.config, "loaded_app", None)
        handler = _find_tus_handler(app)
        if handler is not None and not handler.shutting_down:
            handler.begin_shutdown()
        super().handle_exit(sig, frame)


def _find_tus_handler(app: Any) -> Any:
    # config.loaded_app is the app wrapped in uvicorn's middleware; walk down to the Starlette app
    for _ in range(8):
        if app is None:
            return None
        state = getattr(app, "state", None)
        parts = getattr(state, "parts", None) if state is not None else None
        if parts is not None:
            return parts.tus
        app = getattr(app, "app", None)
    return None


def build_config(settings: Settings, fd: int | None = None) -> uvicorn.Config:
    from modeldrop.server.app import create_app
    from modeldrop.server.components import build

    return uvicorn.Config(
        create_app(settings, build(settings)),  # this process's components, built once
        host=settings.host,
        port=settings.port,
        fd=fd,
        loop="uvloop",
        # httptools with bounded request heads, offering large bodies' sockets to the tus handler
        http=SocketBodyProtocol.with_limits(HeadLimits.from_settings(settings)),
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
        proxy_headers=False,  # forwarded headers are honoured only with --trust-proxy, by the app itself
        server_header=False,
        h11_max_incomplete_event_size=settings.max_header_size,
        limit_concurrency=1024,
    )


def raise_open_file_limit(ceiling: int = 65536) -> int:
    """Lifts the soft limit on open files towards the hard one; returns the soft limit now.

    Every connection is a file: at systemd's default soft limit of 1,024, accept() fails before uvicorn's
    limit_concurrency (1,024) or --header-timeout can do their part, and slow clients shut everyone out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    keep_freed_heap()
    config = build_config(settings)
    server = GracefulServer(config)
    server.run(sockets=[sock] if sock is not None else None)


def _child(settings: Settings, sock: socket.socket) -> None:
    configure_logging(settings.log_level)
    serve(settings, sock)


def serve_processes(settings: Settings) -> None:
    """Several processes on one listening socket; the locks and the store are shared through the disk."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_child, args=(settings, sock), daemon=False) for _ in range(settings.workers)]
    for child in children:
        child.start()

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.pid:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


def run(command: str, args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_args(args, os.environ)
        exposure = settings.check_exposure()
        if exposure:
            raise SettingsError(exposure)
    except SettingsError as exc:
        print(f"modeldrop serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if not settings.token:
        log.warning("no token configured: anyone who can reach %s:%d can upload models", settings.host, settings.port)
    try:
        check_directories(settings)
    except SettingsError as exc:
        print(f"modeldrop serve: {exc}", file=sys.stderr)
        return 2
    raise_open_file_limit()
    log.info("modeldrop listening on http://%s:%d (%s)", settings.host, settings.port, settings.describe())
    if settings.workers > 1:
        serve_processes(settings)
    else:
        serve(settings)
    return 0
