"""Real processes for tests: `modeldrop serve`, `modeldrop worker` and `redis-server` on free loopback ports.

Nothing here is a fake: each class starts the real program as a subprocess, waits until it answers,
and can stop it politely or kill it with SIGKILL to test crash recovery.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _options_to_args(options: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [flag, str(item)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (children first found, then theirs)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found.extend(children)
        pending.extend(children)
    return found


class Process:
    """A subprocess with its output in a log file, stoppable and killable."""

    name = "process"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log = open(self.log_path, "ab")
        log.write(f"\n--- start {' '.join(argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=merged, cwd=REPO,
                                     start_new_session=True)
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL of the whole process tree: nothing gets a chance to clean up, as in a crash.

        The tree, not just the process group: RQ's work horse moves itself into a group of its own.
        """
        if self.alive():
            assert self.proc is not None
            tree = descendants(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with_children = self.proc.returncode
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any child left behind
        except ProcessLookupError:
            pass
        return with_children

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class ServerProcess(Process):
    """`modeldrop serve` with its own data directory; options are `serve` flags (e.g. token=["t"])."""

    name = "server"

    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None, env: Mapping[str, str] | None = None,
                 **options: Any) -> None:
        super().__init__(log_path)
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.env = dict(env or {})
        self.options = {"idle_timeout": 10, "lock_timeout": 5, **options}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return Path(self.options.get("models_dir") or self.data_dir / "models")

    @property
    def staging_dir(self) -> Path:
        return Path(self.options.get("staging_dir") or self.data_dir / "staging")

    def start(self, timeout: float = 20) -> ServerProcess:
        argv = [PYTHON, "-m", "modeldrop.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), *_options_to_args(self.options)]
        self._spawn(argv, self.env)
        wait_for(self._healthy, timeout, f"modeldrop serve on port {self.port}\n{self.log()[-3000:]}")
        return self

    def _healthy(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"the server exited with {self.proc.returncode if self.proc else '?'}:\n"
                               f"{self.log()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()


class RedisProcess(Process):
    """A real redis-server on a free port; persistence off unless asked, so a restart can lose data."""

    name = "redis"

    def __init__(self, directory: Path, port: int | None = None, persistent: bool = False) -> None:
        super().__init__(Path(directory) / "redis.log")
        self.directory = Path(directory)
        self.port = port or free_port()
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup.sh test (it installs it as root)")
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes"] if self.persistent else ["--save", "", "--appendonly", "no"]
        self._spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                     "--protected-mode", "no", *persistence])
        wait_for(self._ping, timeout, f"redis-server on port {self.port}")
        return self

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def restart(self, lose_data: bool = True) -> RedisProcess:
        self.kill()
        if lose_data:
            for leftover in self.directory.glob("*.rdb"):
                leftover.unlink()
            shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
        return self.start()


class WorkerProcess(Process):
    """`modeldrop worker` (real RQ workers) against a Redis and a data directory."""

    name = "worker"

    def __init__(self, data_dir: Path, redis_url: str, log_path: Path, **options: Any) -> None:
        super().__init__(log_path)
        self.data_dir = Path(data_dir)
        self.redis_url = redis_url
        self.options = options

    def start(self, burst: bool = False) -> WorkerProcess:
        argv = [PYTHON, "-m", "modeldrop.cli.main", "worker", "--redis-url", self.redis_url, "--data-dir", str(self.data_dir),
                *_options_to_args(self.options)]
        if burst:
            argv.append("--burst")
        self._spawn(argv)
        return self


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None)


class NginxProcess(Process):
    """Debian's nginx in front of modeldrop servers, set up as README's "Behind a reverse proxy" says:
    no body size limit, no request buffering, timeouts of minutes; `proxy_next_upstream` skips a dead
    upstream. `forwarded=False` leaves out the headers that tell the servers the public host and scheme."""

    name = "nginx"

    def __init__(self, directory: Path, upstreams: list[int], port: int | None = None, forwarded: bool = True) -> None:
        super().__init__(Path(directory) / "nginx.log")
        self.directory = Path(directory)
        self.upstreams = upstreams
        self.port = port or free_port()
        self.forwarded = forwarded

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        d = self.directory
        servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in self.upstreams)
        forwarded = ("            proxy_set_header Host $http_host;\n"
                     "            proxy_set_header X-Forwarded-Host $http_host;\n"
                     "            proxy_set_header X-Forwarded-Proto $scheme;\n"
                     "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                     ) if self.forwarded else ""
        return f"""daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream modeldrop {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        location / {{
            proxy_pass http://modeldrop;
            proxy_http_version 1.1;
{forwarded}            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502;
        }}
    }}
}}
"""

    def start(self, timeout: float = 10) -> NginxProcess:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed: run scripts/setup.sh test (it installs it as root)")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "nginx.conf").write_text(self.config())
        self._spawn([binary, "-p", str(self.directory), "-c", str(self.directory / "nginx.conf"),
                     "-e", str(self.directory / "error.log")])
        wait_for(self._listening, timeout, f"nginx on port {self.port}\n{self.log()[-2000:]}")
        return self

    def _listening(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"nginx exited:\n{self.log()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False
