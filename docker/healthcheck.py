"""Container health check: `python docker/healthcheck.py [serve|worker]`; exit 0 when healthy.

serve:  GET http://127.0.0.1:$MODELDROP_PORT/healthz answers 2xx (the image has no curl).
worker: an RQ worker of this host (container) is registered in Redis at $REDIS_URL; RQ drops a worker's
        registration when its heartbeats stop, so a hung or dead worker turns unhealthy.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def check_server() -> str | None:
    url = f"http://127.0.0.1:{os.environ.get('MODELDROP_PORT') or '8080'}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # raises on 4xx/5xx
            response.read(4096)
    except OSError as exc:
        return f"{url}: {exc}"
    return None


def check_worker() -> str | None:
    from redis import Redis
    from rq import Worker

    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        return "REDIS_URL is not set"
    host = socket.gethostname()
    try:
        workers = Worker.all(connection=Redis.from_url(redis_url, socket_timeout=4))
    except Exception as exc:  # any Redis failure means unhealthy
        return f"redis {redis_url}: {exc}"
    if not any(worker.hostname == host for worker in workers):
        return f"no RQ worker of host {host} is registered in {redis_url}"
    return None


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "serve"
    checks = {"serve": check_server, "worker": check_worker}
    if mode not in checks:
        print(f"healthcheck: unknown mode {mode!r} (serve or worker)", file=sys.stderr)
        return 2
    problem = checks[mode]()
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
