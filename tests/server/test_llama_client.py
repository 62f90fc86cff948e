"""server/llama.py on its own: llama-server's answers as the real binary gives them (shapes captured from
router mode), the event stream's framing, and the watcher's fallback to polling for builds without
`/models/sse`. The end-to-end tests against the binary itself are in test_llama_view.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from modeldrop.server import llama
from modeldrop.server.llama import LlamaClient, LlamaWatch, ModelState
from tests.support.loop import run_scenario

# GET /models of llama-server 11434 (router mode) after a failed load of "bad", args and preset shortened
LISTING = {"object": "list", "data": [
    {"id": "bad", "aliases": [], "object": "model", "source": "models_dir",
     "status": {"value": "unloaded", "exit_code": 1, "failed": True, "args": ["llama-server", "--model", "/m/bad.gguf"],
                "preset": "[bad]\nmodel = /m/bad.gguf\n"}},
    {"id": "tiny", "object": "model", "status": {"value": "loaded", "args": []}},
    {"id": "next", "object": "model", "status": {"value": "loading"}},
]}


def test_listing_states_keep_only_state_and_exit_code() -> None:
    states = {entry["id"]: ModelState.from_listing(entry).to_json() for entry in LISTING["data"]}
    assert states == {"bad": {"id": "bad", "state": "failed", "exit_code": 1, "progress": None},
                      "tiny": {"id": "tiny", "state": "loaded", "exit_code": None, "progress": None},
                      "next": {"id": "next", "state": "loading", "exit_code": None, "progress": None}}
    assert "args" not in json.dumps(states) and "/m/" not in json.dumps(states), "paths and flags stay private"


def feed(chunks: list[bytes]) -> list[str]:
    async def read() -> list[str]:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        return [line async for line in llama._lines(reader, chunked=True)]
    return run_scenario(read)


def test_chunked_event_stream_lines_survive_any_split() -> None:
    body = (b'data: {"model":"tiny","event":"model_status","data":{"status":"loading"}}\n\n'
            b'data: {"model":"*","event":"models_reload"}\n\n')
    framed = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:7], body[7:50], body[50:]))
    framed += b"0\r\n\r\n"
    expected = [line for line in body.decode().split("\n")][:-1]
    assert feed([framed]) == expected
    assert feed([framed[i:i + 3] for i in range(0, len(framed), 3)]) == expected


def test_events_apply_to_the_view_and_failed_loads_keep_their_exit_code() -> None:
    watch = LlamaWatch(LlamaClient("http://127.0.0.1:9"))
    watch.models = {"tiny": ModelState("tiny", "unloaded")}
    loading = {"model": "tiny", "event": "status_change",
               "data": {"status": "loading", "progress": {"stages": ["text_model"], "value": 0.5}}}
    assert watch.apply(loading) is True
    assert watch.models["tiny"] == ModelState("tiny", "loading", None, 0.5)
    assert watch.apply({"model": "tiny", "event": "status_change", "data": {"status": "unloaded", "exit_code": 1}}) \
        is False, "the end of a load re-reads the listing"
    assert watch.models["tiny"] == ModelState("tiny", "failed", 1)
    watch.apply({"model": "tiny", "event": "status_change", "data": {"status": "unloaded", "exit_code": 0}})
    assert watch.models["tiny"] == ModelState("tiny", "unloaded")
    assert watch.apply({"model": "*", "event": "models_reload"}) is False
    assert watch.apply({"model": "new", "event": "model_status", "data": {"status": "loading"}}) is False


class OldRouter(BaseHTTPRequestHandler):
    """A router build without /models/sse (404), listing whatever `states` holds: the watcher must poll."""

    states: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.startswith("/models") and not self.path.startswith("/models/sse"):
            body = json.dumps({"data": [{"id": key, "status": {"value": value}}
                                        for key, value in self.states.items()]}).encode()
            self.send_response(200)
        else:
            body = b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}'
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - as llama-server answers a load of an id it does not list
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def old_router() -> Iterator[str]:
    OldRouter.states = {"tiny": "unloaded"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), OldRouter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_without_the_event_stream_the_watcher_polls(old_router: str) -> None:
    async def follow() -> list[dict[str, Any]]:
        watch = LlamaWatch(LlamaClient(old_router, timeout=2), poll_interval=0.1)
        seen: list[dict[str, Any]] = []
        async for document in watch.listen(lambda: False):
            if document is None:
                continue
            seen.append(document)
            if len(seen) == 1:
                OldRouter.states = {"tiny": "loaded"}
            else:
                break
        await watch.close()
        return seen

    first, second = run_scenario(lambda: asyncio.wait_for(follow(), 10))
    assert first["llama_server"] == {"configured": True, "reachable": True, "error": None}
    assert first["models"]["tiny"]["state"] == "unloaded"
    assert second["models"]["tiny"]["state"] == "loaded"


def test_client_errors_are_clear(old_router: str) -> None:
    client = LlamaClient(old_router, timeout=2)
    with pytest.raises(llama.UnknownModel) as unknown:
        client.load("nothing")  # 404 even after a rescan
    assert unknown.value.status == 404 and "router mode" in unknown.value.message
    with pytest.raises(llama.Unreachable) as down:
        LlamaClient("http://127.0.0.1:9", timeout=2).states()
    assert down.value.status == 503 and down.value.message.startswith("could not reach llama-server at")
    outcome = LlamaClient("http://127.0.0.1:9", timeout=2).notify_installed("tiny")
    assert outcome["notified"] is False and outcome["error"].startswith("could not reach llama-server")
