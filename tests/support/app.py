"""The app in process: the ASGI application `modeldrop serve` runs, called on an event loop in a thread of this
process (its lifespan run as the server runs it), without a server or a socket. The same TusClient talks to it.

    app = in_process(max_size=1_000_000)         # in a test module: a fixture named `app`, one app per test

    def test_post(app: InProcess) -> None:
        location = app.tus.location(100)         # tests/support/tus.py's client, through the app
        assert data_path(app, location).read_bytes() == b""   # helpers that take a server take this too

    app.call("PATCH", path, headers, [first, second], disconnect=True)   # ASGI messages by hand

`make_app(settings)` is the one place tests build the application: when the way it is built changes, only
that line does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from starlette.applications import Starlette

from modeldrop.server.app import create_app
from modeldrop.server.settings import Settings
from tests.support.tus import TusClient

HOST = "127.0.0.1"


def settings_for(directory: Path, **options: Any) -> Settings:
    """Settings for a data directory of the test's own; fsync off and no disk headroom unless asked for."""
    (directory / "models").mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=directory, models_dir=directory / "models", staging_dir=directory / "staging",
                    **{"fsync": False, "disk_headroom": 0, **options})


def make_app(settings: Settings) -> Starlette:
    """The application, as `modeldrop serve` builds it."""
    return create_app(settings)


class _PortalHttp:
    """httpx's synchronous face on an AsyncClient whose requests run on the app's event loop (the portal's)."""

    def __init__(self, portal: Any, client: httpx.AsyncClient) -> None:
        self.portal, self.client = portal, client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.portal.call(functools.partial(self.client.request, method, url, **kwargs))
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)


class InProcess:
    """A running app: `tus` is a TusClient to it; staging_dir, models_dir and url as a ServerProcess has them."""

    url = f"http://{HOST}"

    def __init__(self, settings: Settings, app: Starlette, portal: Any, client: httpx.AsyncClient) -> None:
        self.settings, self.app, self.portal = settings, app, portal
        self.tus = TusClient(http=_PortalHttp(portal, client))

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def staging_dir(self) -> Path:
        return Path(self.settings.staging_dir)

    @property
    def models_dir(self) -> Path:
        return Path(self.settings.models_dir)

    def call(self, method: str, path: str, headers: Mapping[str, str], body: Sequence[bytes] = (),
             disconnect: bool = False) -> tuple[int, dict[str, str]] | None:
        """One request as ASGI messages: each of `body` in its own message, then the end of the body, or with
        disconnect=True the client going away instead. (status, lower-cased headers), None if nothing was
        answered."""
        answer: tuple[int, dict[str, str]] | None = self.portal.call(
            functools.partial(self._call, method, path, headers, body, disconnect))
        return answer

    async def _call(self, method: str, path: str, headers: Mapping[str, str], body: Sequence[bytes],
                    disconnect: bool) -> tuple[int, dict[str, str]] | None:
        messages = [{"type": "http.request", "body": part, "more_body": True} for part in body]
        if not disconnect:
            messages.append({"type": "http.request", "body": b"", "more_body": False})
        answer: dict[str, Any] = {}
        answered = anyio.Event()

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            if not disconnect:  # the request was read to its end: the client waits for the answer, then goes
                await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        announced = sum(len(part) for part in body)
        sent = {"host": HOST, "content-length": str(announced), **{k.lower(): v for k, v in headers.items()}}
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(k.encode(), v.encode()) for k, v in sent.items()], "client": (HOST, 1),
                 "server": (HOST, 80)}
        await self.app(scope, receive, send)
        return (answer["status"], answer["headers"]) if answer else None


@contextlib.contextmanager
def running_app(directory: Path, **options: Any) -> Iterator[InProcess]:
    """The app for `directory` (its data dir), started and, at the end of the block, shut down."""
    settings = settings_for(directory, **options)
    app = make_app(settings)
    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=InProcess.url, timeout=60)
        try:
            yield InProcess(settings, app, portal, client)
        finally:
            portal.call(client.aclose)


def in_process(**options: Any) -> Any:
    """`app = in_process(max_size=...)` in a test module: a fixture `app`, a fresh app (and data dir) per test."""

    @pytest.fixture
    def app(tmp_path: Path) -> Iterator[InProcess]:
        with running_app(tmp_path / "data", **options) as running:
            yield running

    return app
