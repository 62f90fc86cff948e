"""The lock's release callback is live from the moment the lock is taken (tusd passes it at acquire).

A PATCH takes the upload's lock, then reads the record and checks headers before its body starts. A
release request that arrives in that window must not be lost: if it were, the newcomer would wait out the
whole lock timeout while the old request goes on reading a body that may never come, and answer 423.

In-process (the app called as an ASGI function) so the window can be held open deterministically: the
PATCH's second record read, the one it makes under the lock, waits until the newcomer has asked.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from modeldrop.server.tus.handler import TusHandler
from tests.support.app import make_app, settings_for
from tests.support.loop import run_scenario
from tests.support.tus import encode_metadata, gguf_bytes

LOCK_TIMEOUT = 3.0


def _scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "localhost", **headers}.items()],
            "client": ("127.0.0.1", 1), "server": ("test", 80)}


async def _call(app: Any, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                stall_after_body: asyncio.Event | None = None) -> tuple[int, dict[str, str]]:
    """One request; with stall_after_body, the body's first bytes come and then nothing until the event is set
    (a client whose link went quiet)."""
    sent = False
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": stall_after_body is not None}
        if stall_after_body is not None:
            await stall_after_body.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}

    await app(_scope(method, path, {"tus-resumable": "1.0.0", **headers}), receive, send)
    return answer["status"], answer["headers"]


def test_release_request_between_lock_and_body_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_scenario(lambda: _release_request_between_lock_and_body(tmp_path, monkeypatch))


async def _release_request_between_lock_and_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path, lock_timeout=LOCK_TIMEOUT, idle_timeout=60.0, fsync=True)
    app = make_app(settings)
    model = gguf_bytes()
    status, headers = await _call(app, "POST", "/files/", {"upload-length": str(len(model)),
                                                          "upload-metadata": encode_metadata({"filename": "m.gguf"})})
    assert status == 201
    path = "/files/" + headers["location"].rsplit("/", 1)[-1]

    in_window = asyncio.Event()
    asked = asyncio.Event()
    loads = 0
    original_load = TusHandler._load

    async def load_holding_the_window(self: TusHandler, upload_id: str) -> Any:
        nonlocal loads
        loads += 1
        if loads == 2:  # the PATCH's read under its lock: hold it until the newcomer has asked for the upload
            in_window.set()
            await asked.wait()
        return await original_load(self, upload_id)

    monkeypatch.setattr(TusHandler, "_load", load_holding_the_window)
    never = asyncio.Event()
    patch = asyncio.create_task(_call(app, "PATCH", path, {
        "content-type": "application/offset+octet-stream", "upload-offset": "0", "content-length": str(len(model))},
        model[:1024], stall_after_body=never))
    await asyncio.wait_for(in_window.wait(), 5)

    locker = app.state.parts.locker
    requests_before = locker.release_requests
    started = time.monotonic()
    head = asyncio.create_task(_call(app, "HEAD", path, {}))
    while locker.release_requests == requests_before:  # the newcomer found the lock taken and asked
        await asyncio.sleep(0.01)
    asked.set()
    try:
        head_status, head_headers = await asyncio.wait_for(head, LOCK_TIMEOUT + 5)
        waited = time.monotonic() - started
        patch_stopped = patch.done()
    finally:
        never.set()  # the quiet client goes away, whatever happened
        patch_status, _ = await asyncio.wait_for(patch, 5)
        app.state.parts.tus.close()
    assert head_status == 200, f"HEAD answered {head_status} after {waited:.1f}s: the release request was lost"
    assert waited < 1.0, f"HEAD waited {waited:.1f}s for a lock whose holder had been asked to let go"
    assert head_headers["upload-offset"] in ("0", "1024")
    assert patch_stopped and patch_status >= 500  # stopped by the release, retryable (tus clients retry 5xx)
