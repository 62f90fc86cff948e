"""After an install, llama-server (router mode) is told to rescan and must list the new model.

The real binary comes from scripts/build-llama-server.sh (tests/support/llama.py finds it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import write_model
from tests.support.llama import LlamaServer
from tests.support.processes import ServerProcess, free_port, wait_for
from tests.support.tus import TusClient


@pytest.mark.llama
def test_llama_server_lists_model_after_install(llama_server: LlamaServer,
                                                start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(llama_server_url=llama_server.url)
    assert server.models_dir == llama_server.models_dir
    assert "tiny" not in (llama_server.model_ids() or set())
    client = TusClient(server.url)
    upload = client.upload_file(write_model(tmp_path / "tiny.gguf"))
    status = client.wait_state(upload, "installed", "failed")
    assert status["state"] == "installed", status
    wait_for(lambda: client.status(upload)["llama_server"], 15, "the llama-server outcome")
    outcome = client.status(upload)["llama_server"]
    assert outcome == {"notified": True, "listed": True, "error": None, "model_id": "tiny"}, outcome
    assert "tiny" in (llama_server.model_ids() or set())
    assert client.get_json("/api/models/tiny.gguf")["llama_server"]["listed"] is True


def test_llama_server_unreachable_install_still_succeeds(start_server: Callable[..., ServerProcess],
                                                         tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    server = start_server(llama_server_url=nobody)
    client = TusClient(server.url)
    source = write_model(tmp_path / "tiny.gguf")
    upload = client.upload_file(source)
    status = client.wait_state(upload, "installed", "failed")
    assert status["state"] == "installed", status
    assert (server.models_dir / "tiny.gguf").read_bytes() == source.read_bytes()
    outcome = wait_for(lambda: client.status(upload)["llama_server"], 15, "the llama-server outcome")
    assert outcome["notified"] is False
    assert outcome["error"].startswith(f"could not reach llama-server at {nobody}"), outcome
