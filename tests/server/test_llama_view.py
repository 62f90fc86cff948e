"""llama-server's own view through modeldrop: states in /api/models, load and unload, the live event stream,
`modeldrop load/unload/models`, and clear answers when llama-server is not configured or not reachable.

No mocks: a real `modeldrop serve` and, for the `llama` tests, the real llama-server binary that
scripts/build-llama-server.sh builds (skipped where it is not built), loading a real (tiny, random-weight)
llama model uploaded through tus, and answering a completion with it.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ggufgen import write_model, write_runnable_llama
from tests.support.llama import LlamaServer
from tests.support.processes import REPO, ServerProcess, free_port, wait_for
from tests.support.tus import TusClient

TOKEN = "llama-token"


class EventStream:
    """GET /api/llama/events read in a thread: each `event: llama` document lands in a queue."""

    def __init__(self, server: ServerProcess, token: str | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        headers = {"Accept": "text/event-stream", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.connection.request("GET", "/api/llama/events", headers=headers)
        self.response = self.connection.getresponse()
        self.documents: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        if self.response.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event, data = None, []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if event == "llama" and data:
                        self.documents.put(json.loads("\n".join(data)))
                    event, data = None, []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
        except (OSError, ValueError, AttributeError):
            pass  # closed by the test (http.client drops its file under the reading thread)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        for document in self.seen:
            if predicate(document):
                return document
        deadline = timeout
        while deadline > 0:
            try:
                document = self.documents.get(timeout=0.5)
            except queue.Empty:
                deadline -= 0.5
                continue
            self.seen.append(document)
            if predicate(document):
                return document
        raise TimeoutError(f"no such event in {timeout}s; seen: {self.seen[-5:]}")

    def close(self) -> None:
        self.connection.close()


def state_in(document: dict[str, Any], model: str) -> str | None:
    return ((document.get("models") or {}).get(model) or {}).get("state")


def post(client: TusClient, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.request("POST", path, headers={"Content-Length": "0", **(headers or {})})


def api_state(client: TusClient, name: str) -> str | None:
    return (client.get_json(f"/api/models/{name}").get("llama") or {}).get("state")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODELDROP_")}
    return subprocess.run([sys.executable, "-m", "modeldrop.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def completion(llama: LlamaServer, model: str) -> dict[str, Any]:
    status, body = llama.request("POST", "/v1/completions", {"model": model, "prompt": "hello world",
                                                             "max_tokens": 8, "temperature": 0}, timeout=120)
    assert status == 200, (status, body, llama.log()[-3000:])
    return dict(body)


# -- against the real llama-server ------------------------------------------------------------------------


@pytest.mark.llama
def test_an_upload_is_loaded_answers_and_is_unloaded_through_modeldrop(
        llama_server: LlamaServer, start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(llama_server_url=llama_server.url, token=[TOKEN])
    client = TusClient(server.url, token=TOKEN)
    upload = client.upload_file(write_runnable_llama(tmp_path / "tiny.gguf"))
    assert client.wait_state(upload, "installed", "failed")["state"] == "installed"
    wait_for(lambda: client.status(upload)["llama_server"], 15, "the rescan after the install")

    listing = client.get_json("/api/models")
    assert listing["llama_server"] == {"configured": True, "reachable": True, "error": None}
    entry = {model["name"]: model for model in listing["models"]}["tiny.gguf"]
    assert entry["llama"] == {"id": "tiny", "state": "unloaded", "exit_code": None, "progress": None}
    assert llama_server.states()["tiny"] == "unloaded"

    events = EventStream(server, TOKEN)
    try:
        assert events.response.status == 200
        assert events.response.getheader("Content-Type", "").startswith("text/event-stream")
        first = events.wait_for(lambda document: True, timeout=15)
        assert first["llama_server"]["reachable"] is True and state_in(first, "tiny") == "unloaded", first

        answer = post(client, "/api/models/tiny.gguf/load")
        assert answer.status_code == 200, answer.text
        assert answer.json()["llama"]["id"] == "tiny"
        assert answer.json()["llama"]["state"] in ("loading", "loaded")
        wait_for(lambda: api_state(client, "tiny.gguf") == "loaded", 120, "the API to say loaded", interval=0.2)
        events.wait_for(lambda document: state_in(document, "tiny") == "loaded")
        assert llama_server.states()["tiny"] == "loaded", "llama-server itself says so"
        assert client.get_json("/api/llama")["models"]["tiny"]["state"] == "loaded"

        body = completion(llama_server, "tiny")
        assert body["model"] == "tiny"
        assert isinstance(body["choices"][0]["text"], str)
        assert body["usage"]["completion_tokens"] > 0, body

        again = post(client, "/api/models/tiny.gguf/load")
        assert again.status_code == 200 and again.json()["llama"]["state"] == "loaded", \
            "loading a loaded model is no error"

        answer = post(client, "/api/models/tiny.gguf/unload")
        assert answer.status_code == 200, answer.text
        wait_for(lambda: api_state(client, "tiny.gguf") == "unloaded", 60, "the API to say unloaded", interval=0.2)
        events.wait_for(lambda document: state_in(document, "tiny") == "unloaded"
                        and any(state_in(seen, "tiny") == "loaded" for seen in events.seen))
        assert llama_server.states()["tiny"] == "unloaded"
    finally:
        events.close()


@pytest.mark.llama
def test_a_model_llama_server_cannot_load_shows_failed_with_its_exit_code(
        llama_server: LlamaServer, start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """A GGUF that passes modeldrop's checks but is no model llama.cpp can run (two stray tensors)."""
    server = start_server(llama_server_url=llama_server.url)
    client = TusClient(server.url)
    upload = client.upload_file(write_model(tmp_path / "hollow.gguf"))
    assert client.wait_state(upload, "installed", "failed")["state"] == "installed"
    answer = post(client, "/api/models/hollow.gguf/load")
    assert answer.status_code == 200, answer.text
    wait_for(lambda: api_state(client, "hollow.gguf") == "failed", 60, "the failed load", interval=0.2)
    state = client.get_json("/api/models/hollow.gguf")["llama"]
    assert state["exit_code"] not in (None, 0), state
    assert llama_server.states()["hollow"] == "failed"


@pytest.mark.llama
def test_cli_load_unload_and_models_column(llama_server: LlamaServer, start_server: Callable[..., ServerProcess],
                                           tmp_path: Path) -> None:
    server = start_server(llama_server_url=llama_server.url)
    write_runnable_llama(server.models_dir / "placed.gguf")  # put there by hand: load rescans first
    write_model(server.models_dir / "hollow.gguf")
    target = ["--server", server.url]

    loaded = run_cli("load", "placed.gguf", *target)
    assert (loaded.returncode, loaded.stdout.strip()) == (0, "loaded placed.gguf in llama-server (model placed)"), \
        loaded.stderr
    assert llama_server.states()["placed"] == "loaded"
    assert completion(llama_server, "placed")["usage"]["completion_tokens"] > 0

    table = run_cli("models", *target)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[-1] == "LLAMA-SERVER"
    assert next(row for row in rows if row.startswith("placed.gguf")).split()[-1] == "loaded", table.stdout

    failed = run_cli("load", "hollow.gguf", *target)
    assert failed.returncode == 1
    assert "could not load hollow.gguf" in failed.stderr and "exited with code" in failed.stderr, failed.stderr

    as_json = run_cli("unload", "placed.gguf", "--json", *target)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["state"] == "unloaded"
    assert llama_server.states()["placed"] == "unloaded"

    unknown = run_cli("load", "nothing.gguf", *target)
    assert unknown.returncode == 1 and "no model named 'nothing.gguf'" in unknown.stderr, unknown.stderr


# -- without llama-server ---------------------------------------------------------------------------------


def test_without_llama_server_url_the_routes_say_so_and_the_list_still_answers(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    client = TusClient(server.url)
    write_model(server.models_dir / "m.gguf")
    listing = client.get_json("/api/models")
    assert listing["llama_server"] == {"configured": False, "reachable": None, "error": None}
    assert [(model["name"], model["llama"]) for model in listing["models"]] == [("m.gguf", None)]
    assert client.get_json("/api/models/m.gguf")["llama"] is None
    assert client.get_json("/api/llama") == {"llama_server": listing["llama_server"], "models": {}}
    for action in ("load", "unload"):
        answer = post(client, f"/api/models/m.gguf/{action}")
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"] == "llama_not_configured"
        assert "--llama-server-url" in answer.json()["message"]
    events = client.request("GET", "/api/llama/events")
    assert (events.status_code, events.json()["error"]) == (409, "llama_not_configured")
    missing = post(client, "/api/models/nothing.gguf/load")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")

    cli = run_cli("load", "m.gguf", "--server", server.url)
    assert cli.returncode == 1 and "--llama-server-url" in cli.stderr and "409" in cli.stderr, cli.stderr
    table = run_cli("models", "--server", server.url)
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[-1] == "-", table.stdout


def test_with_llama_server_down_the_routes_answer_503_and_the_list_still_answers(
        start_server: Callable[..., ServerProcess]) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    server = start_server(llama_server_url=nobody)
    client = TusClient(server.url)
    write_model(server.models_dir / "m.gguf")
    listing = client.get_json("/api/models")
    assert listing["llama_server"]["configured"] is True and listing["llama_server"]["reachable"] is False
    assert listing["llama_server"]["error"].startswith(f"could not reach llama-server at {nobody}")
    assert listing["models"][0]["llama"] is None
    answer = post(client, "/api/models/m.gguf/load")
    assert (answer.status_code, answer.json()["error"]) == (503, "llama_unreachable")
    assert nobody in answer.json()["message"]
    events = EventStream(server)
    try:
        assert events.response.status == 200
        document = events.wait_for(lambda document: True, timeout=15)
        assert document["llama_server"]["reachable"] is False and document["models"] == {}
    finally:
        events.close()
    table = run_cli("models", "--server", server.url)
    assert table.returncode == 0 and "llama-server: not reachable (could not reach" in table.stdout, table.stdout


def test_load_and_unload_need_the_token_and_the_servers_own_origin(start_server: Callable[..., ServerProcess]) -> None:
    """The same protection as DELETE /api/models: the token, and the browser guard against other sites."""
    tokened = start_server(token=[TOKEN], llama_server_url=f"http://127.0.0.1:{free_port()}")
    write_model(tokened.models_dir / "m.gguf")
    anonymous = TusClient(tokened.url)
    for path in ("/api/models/m.gguf/load", "/api/models/m.gguf/unload"):
        assert post(anonymous, path).status_code == 401
    assert anonymous.request("GET", "/api/llama/events").status_code == 401
    assert anonymous.request("GET", "/api/llama").status_code == 401
    assert post(TusClient(tokened.url, token=TOKEN), "/api/models/m.gguf/load").status_code == 503

    (tokened.data_dir.parent / "open").mkdir()
    open_server = start_server(data_dir=tokened.data_dir.parent / "open",
                               llama_server_url=f"http://127.0.0.1:{free_port()}")
    write_model(open_server.models_dir / "m.gguf")
    client = TusClient(open_server.url)
    foreign = post(client, "/api/models/m.gguf/load", {"Origin": "http://evil.example"})
    assert (foreign.status_code, foreign.json()["error"]) == (403, "cross_origin")
    cross_site = post(client, "/api/models/m.gguf/unload", {"Sec-Fetch-Site": "cross-site"})
    assert (cross_site.status_code, cross_site.json()["error"]) == (403, "cross_origin")
    own = post(client, "/api/models/m.gguf/load", {"Origin": open_server.url})
    assert own.status_code == 503, "its own page gets through (to the unreachable llama-server)"
