"""Fixtures that start real processes: modeldrop servers, RQ workers and redis-server, on free ports; a real
GGUF model to upload, and relays to put between a client and a server."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ggufgen import write_model
from tests.support.llama import BUILD_HINT, LlamaServer, llama_server_binary
from tests.support.models import MIB
from tests.support.processes import Process, RedisProcess, ServerProcess, WorkerProcess
from tests.support.proxy import Proxy


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the long fault and soak variants (minutes to hours)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Every process a test starts is stopped at its end, whatever happened."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop(timeout=5)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def start_server(tmp_path: Path, data_dir: Path, processes: list[Process]) -> Callable[..., ServerProcess]:
    """start_server(**serve_options) -> a running `modeldrop serve`; data_dir= and port= may be given."""
    counter = iter(range(1000))

    def start(data_dir: Path = data_dir, **options: Any) -> ServerProcess:
        server = ServerProcess(data_dir, tmp_path / f"server-{next(counter)}.log", **options)
        processes.append(server)
        return server.start()

    return start


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A running server in embedded mode (no Redis), fsync on, no token, on loopback."""
    return start_server()


@pytest.fixture
def redis_server(tmp_path: Path, processes: list[Process]) -> RedisProcess:
    redis = RedisProcess(tmp_path / "redis")
    processes.append(redis)
    return redis.start()


@pytest.fixture
def start_worker(tmp_path: Path, data_dir: Path, processes: list[Process]) -> Callable[..., WorkerProcess]:
    """start_worker(redis_url, burst=False, **worker_options) -> running `modeldrop worker` processes."""
    counter = iter(range(1000))

    def start(redis_url: str, burst: bool = False, data_dir: Path = data_dir, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(data_dir, redis_url, tmp_path / f"worker-{next(counter)}.log", **options)
        processes.append(worker)
        return worker.start(burst=burst)

    return start


@pytest.fixture
def llama_server(tmp_path: Path, data_dir: Path, processes: list[Process]) -> LlamaServer:
    """A real llama-server in router mode reading data_dir/models (the default server's models directory);
    the test is skipped where scripts/build-llama-server.sh has not built one."""
    binary = llama_server_binary()
    if binary is None:
        pytest.skip(BUILD_HINT)
    server = LlamaServer(binary, data_dir / "models", tmp_path / "llama-server.log")
    processes.append(server)
    return server.start()


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 24 MiB GGUF whose bytes never repeat (float32 ramps), so a misplaced block changes the hash.

    24 MiB is three of the server's 8 MiB write batches.
    """
    return write_model(tmp_path_factory.mktemp("models") / "ramp-24m.gguf", tensors=3, tensor_elems=2 * MIB)


@pytest.fixture
def proxy() -> Iterator[Callable[..., Proxy]]:
    """proxy(server, rate=None) -> a throttling, cuttable relay to that server's port, closed at the test's end."""
    opened: list[Proxy] = []

    def start(server: ServerProcess, **options: Any) -> Proxy:
        relay = Proxy(server, **options)
        opened.append(relay)
        return relay

    yield start
    for relay in opened:
        relay.close()


@pytest.fixture
def mount() -> Iterator[Any]:
    """mount(*mount_args, target): a real mount (root only) that is undone at the end of the test."""
    targets: list[Path] = []

    def do_mount(*args: str, target: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a filesystem")
        if shutil.which("mount") is None:
            pytest.skip("no mount command")
        result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here ({result.stderr.strip()})")
        targets.append(target)

    yield do_mount
    for target in reversed(targets):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: a state file of its own (empty: this machine never uploaded anything), and none
    of the developer's modeldrop settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODELDROP_")}
    env["MODELDROP_STATE_FILE"] = str(tmp_path / "client-state" / "uploads.json")
    env["PYTHONUNBUFFERED"] = "1"
    return env
