"""The API's side of llama-server: each model's state in the models list, load and unload, the live view.

    GET  /api/models, /api/models/{name}   each entry gets `llama` ({"id", "state", "exit_code", "progress"},
                                           or null when llama-server is not configured or not reachable);
                                           the list gets `llama_server` ({"configured", "reachable", "error"})
    POST /api/models/{name}/load           llama-server's POST /models/load for that entry's model id
    POST /api/models/{name}/unload         llama-server's POST /models/unload
    GET  /api/llama                        {"llama_server": {...}, "models": {id: state}} now
    GET  /api/llama/events                 the same document as server-sent events (`event: llama`), again
                                           each time it changes (relayed from llama-server's /models/sse)

Without --llama-server-url, load, unload and the events answer 409 `llama_not_configured`; with llama-server
down, 503 `llama_unreachable`. The models list answers either way. These routes are behind the same token
and browser guard (origins, host names) as every other route of the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from modeldrop.server.admission import model_id
from modeldrop.server.catalog import Catalog
from modeldrop.server.llama import LlamaClient, LlamaError, LlamaWatch, ModelState, NotConfigured
from modeldrop.server.settings import Settings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("modeldrop.llama")

Endpoint = Callable[[Request], Awaitable[Response]]
LIST_TIMEOUT = 3.0  # the models list waits this long for llama-server, then shows it as unreachable


class LlamaApi:
    def __init__(self, settings: Settings, catalog: Catalog, stopping: Callable[[], bool] = lambda: False) -> None:
        self.catalog = catalog
        self.stopping = stopping
        self.client = LlamaClient(settings.llama_server_url, settings.llama_api_key) \
            if settings.llama_server_url else None
        self.watch = LlamaWatch(self.client) if self.client is not None else None

    def _client(self) -> LlamaClient:
        if self.client is None:
            raise NotConfigured()
        return self.client

    async def view(self) -> tuple[dict[str, Any], dict[str, ModelState] | None]:
        """(what to say about llama-server, its models by id or None when there is nobody to ask)."""
        if self.client is None:
            return {"configured": False, "reachable": None, "error": None}, None
        try:
            states = await asyncio.to_thread(self.client.states, False, LIST_TIMEOUT)
        except LlamaError as exc:
            return {"configured": True, "reachable": False, "error": exc.message}, None
        return {"configured": True, "reachable": True, "error": None}, states

    @staticmethod
    def _annotate(entry: dict[str, Any], states: dict[str, ModelState] | None) -> dict[str, Any]:
        if states is not None:
            wanted = model_id(str(entry.get("name")))
            entry["llama"] = (states.get(wanted) or ModelState(wanted, "absent")).to_json()
        else:
            entry["llama"] = None
        return entry

    async def listing(self, listing: dict[str, Any]) -> dict[str, Any]:
        """GET /api/models's document with llama-server's view of each model."""
        status, states = await self.view()
        for entry in listing.get("models", []):
            self._annotate(entry, states)
        listing["llama_server"] = status
        return listing

    async def describe(self, entry: dict[str, Any]) -> dict[str, Any]:
        return self._annotate(entry, (await self.view())[1])

    # -- routes -----------------------------------------------------------------------------------------

    async def _act(self, request: Request, action: str) -> Response:
        name = request.path_params["name"]
        await asyncio.to_thread(self.catalog.describe, name)  # 400/403/404 for a name that is not installed
        client = self._client()
        wanted = model_id(name)
        state = await asyncio.to_thread(client.load if action == "load" else client.unload, wanted)
        log.info("llama-server %s model=%s state=%s", action, wanted, state.state)
        return JSONResponse({"name": name, "action": action, "llama": state.to_json()})

    async def load(self, request: Request) -> Response:
        return await self._act(request, "load")

    async def unload(self, request: Request) -> Response:
        return await self._act(request, "unload")

    async def status(self, request: Request) -> Response:
        status, states = await self.view()
        models = {key: state.to_json() for key, state in sorted((states or {}).items())}
        return JSONResponse({"llama_server": status, "models": models})

    async def events(self, request: Request) -> Response:
        self._client()
        assert self.watch is not None
        watch = self.watch

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 3000\n\n"
            async for snapshot in watch.listen(self.stopping):
                if snapshot is None:
                    yield b": keep-alive\n\n"
                else:
                    yield b"event: llama\ndata: " + json.dumps(snapshot).encode() + b"\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def routes(self, authed: Callable[[Endpoint], Endpoint]) -> list[Route]:
        return [
            Route("/api/models/{name:path}/load", authed(self.load), methods=["POST"]),
            Route("/api/models/{name:path}/unload", authed(self.unload), methods=["POST"]),
            Route("/api/llama", authed(self.status), methods=["GET"]),
            Route("/api/llama/events", authed(self.events), methods=["GET"]),
        ]

    async def close(self) -> None:
        if self.watch is not None:
            await self.watch.close()
