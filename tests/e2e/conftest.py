"""Fixtures for the end-to-end tests: a real GGUF model to upload, and relays that are closed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.proxy import Proxy
from tests.ggufgen import write_model
from tests.support.processes import ServerProcess

MIB = 1024 * 1024


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 24 MiB GGUF whose bytes never repeat (float32 ramps), so a misplaced block changes the hash.

    24 MiB is three of the server's 8 MiB write batches.
    """
    return write_model(tmp_path_factory.mktemp("models") / "ramp-24m.gguf", tensors=3, tensor_elems=2 * MIB)


@pytest.fixture
def proxy() -> Iterator[Callable[..., Proxy]]:
    """proxy(server, rate=None) -> a throttling, cuttable relay to that server's port."""
    opened: list[Proxy] = []

    def start(server: ServerProcess, **options: Any) -> Proxy:
        relay = Proxy(server, **options)
        opened.append(relay)
        return relay

    yield start
    for relay in opened:
        relay.close()
