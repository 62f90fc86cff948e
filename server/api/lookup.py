"""GET /api/lookup?size=N: what the server already has of a file of N bytes, before a client hashes or sends it.

    {"size": N, "candidates": [{"sha256": "<hex>", "where": "installed", "name": "x.gguf"},
                               {"sha256": "<hex>", "where": "upload", "name": "y.gguf", "offset": 1234}]}

Installed models whose digest the server recorded, and unfinished uploads (created with this request's token)
that declared one. A client with a file of that size hashes its copy only when there is something to compare
with; a creation that then declares the digest is resumed, linked or answered as installed (server/dedupe.py).
Behind the token, like the models list (which shows the same digests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from modeldrop.server import errors
from modeldrop.server.dedupe import Dedupe
from modeldrop.server.settings import Settings
from modeldrop.server.store.dedupe import token_fingerprint
from modeldrop.server.tus import headers as tus
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]


def routes(settings: Settings, dedupe: Dedupe, authed: Callable[[Endpoint], Endpoint]) -> list[Route]:
    async def lookup(request: Request) -> Response:
        text = request.query_params.get("size")
        if text is None:
            raise errors.BadRequest("GET /api/lookup needs ?size=<bytes>")
        size = tus.parse_non_negative("size", text)
        token_fp = token_fingerprint(settings.token, request.headers)
        found = await asyncio.to_thread(dedupe.lookup, size, token_fp)
        return JSONResponse({"size": size, "candidates": found}, headers={"Cache-Control": "no-store"})

    return [Route("/api/lookup", authed(lookup), methods=["GET"])]
