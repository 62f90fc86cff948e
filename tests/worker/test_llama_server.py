"""After an install, llama-server (router mode) is told to rescan and must list the new model.

The real binary comes from scripts/build-llama-server.sh, cached in
${MODELDROP_CACHE:-~/.cache/modeldrop}/llama-server/<version>/llama-server.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ggufgen import write_model
from tests.support.processes import Process, ServerProcess, free_port, wait_for
from tests.worker.uploads import TusClient


def llama_server_binary() -> Path | None:
    cache = Path(os.environ.get("MODELDROP_CACHE") or Path.home() / ".cache" / "modeldrop") / "llama-server"
    found = sorted(p for p in cache.glob("*/llama-server") if os.access(p, os.X_OK))
    return found[-1] if found else None


class LlamaServer(Process):
    name = "llama-server"

    def __init__(self, binary: Path, models_dir: Path, log_path: Path) -> None:
        super().__init__(log_path)
        self.binary, self.models_dir, self.port = binary, models_dir, free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._spawn([str(self.binary), "--models-dir", str(self.models_dir), "--host", "127.0.0.1",
                     "--port", str(self.port)])
        wait_for(lambda: self.model_ids() is not None, 60, f"llama-server on port {self.port}\n{self.log()[-2000:]}", interval=0.2)
        return self

    def model_ids(self) -> set[str] | None:
        assert self.alive(), self.log()[-2000:]
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/models")
            response = connection.getresponse()
            if response.status != 200:
                return None
            body = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return {str(entry["id"]) for entry in body.get("data", [])}


@pytest.fixture
def llama_server(tmp_path: Path, data_dir: Path, processes: list[Process]) -> Iterator[LlamaServer]:
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("no llama-server binary: run scripts/build-llama-server.sh (about 8 minutes) to build one into "
                    "~/.cache/modeldrop/llama-server/<version>/")
    server = LlamaServer(binary, data_dir / "models", tmp_path / "llama-server.log")
    processes.append(server)
    yield server.start()


@pytest.mark.llama
def test_llama_server_lists_model_after_install(llama_server: LlamaServer,
                                                start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(llama_server_url=llama_server.url)
    assert server.models_dir == llama_server.models_dir
    assert "tiny" not in (llama_server.model_ids() or set())
    client = TusClient(server.url)
    upload_id = client.upload(write_model(tmp_path / "tiny.gguf"))
    status = client.wait_for_state(upload_id, ["installed", "failed"])
    assert status["state"] == "installed", status
    wait_for(lambda: client.status(upload_id)["llama_server"], 15, "the llama-server outcome")
    outcome = client.status(upload_id)["llama_server"]
    assert outcome == {"notified": True, "listed": True, "error": None, "model_id": "tiny"}, outcome
    assert "tiny" in (llama_server.model_ids() or set())
    assert client.get_json("/api/models/tiny.gguf")["llama_server"]["listed"] is True


def test_llama_server_unreachable_install_still_succeeds(start_server: Callable[..., ServerProcess],
                                                         tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    server = start_server(llama_server_url=nobody)
    client = TusClient(server.url)
    source = write_model(tmp_path / "tiny.gguf")
    upload_id = client.upload(source)
    status = client.wait_for_state(upload_id, ["installed", "failed"])
    assert status["state"] == "installed", status
    assert (server.models_dir / "tiny.gguf").read_bytes() == source.read_bytes()
    outcome = wait_for(lambda: client.status(upload_id)["llama_server"], 15, "the llama-server outcome")
    assert outcome["notified"] is False
    assert outcome["error"].startswith(f"could not reach llama-server at {nobody}"), outcome
