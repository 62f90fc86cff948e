"""llama-server's own view, in one place: what it lists and in what state, load, unload, rescan, its events.

Every word modeldrop says to llama-server goes through `LlamaClient`: the worker's rescan after an install
(`notify_installed`), the API's states, load and unload, and the event stream the page follows (`LlamaWatch`).
Only the standard library: the worker and the uploader-side installs carry no HTTP client package.

Router mode (llama.cpp `tools/server`, "Using multiple models"; shapes checked against the real binary):

- `GET /models[?reload=1]` -> `{"data": [{"id": "tiny", "status": {"value": "unloaded", "args": [...],
  "preset": "..."}, ...}], "object": "list"}`. `value` is unloaded, loading, loaded, sleeping or downloading;
  a load that failed leaves `"value": "unloaded", "failed": true, "exit_code": 1`. `?reload=1` rescans first.
- `POST /models/load` and `/models/unload` with `{"model": id}` -> `{"success": true}` at once (the load goes
  on in the background), or `{"error": {"code": 400, "message": "model is already running"}}`, "model is not
  running", and 404 for an id it does not list.
- `GET /models/sse`: `data: {"model": "tiny", "event": "status_change", "data": {"status": "loaded"}}` lines
  (also `model_status`, `models_reload` with model "*", `model_remove`; a loading status carries
  `progress.value`, an unloaded one the child's `exit_code`). No snapshot on connect.

What modeldrop shows of a model (`ModelState.to_json`): `{"id", "state", "exit_code", "progress"}` where
state is llama-server's value, or `failed` (a load that failed, with its exit code), or `absent` (llama-server
does not list the model). The args and preset llama-server also reports (paths, flags) are never passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

from modeldrop.server import errors

log = logging.getLogger("modeldrop.llama")

STATES = ("unloaded", "loading", "loaded", "sleeping", "downloading", "failed", "absent")
MAX_ANSWER = 16 * 1024 * 1024
MAX_EVENT_LINE = 1024 * 1024


# -- errors: each is an HTTP answer of the API, and a sentence for the worker's record ----------------------


class LlamaError(errors.HTTPError):
    status = 502
    code = "llama_error"
    default_message = "llama-server answered with an error"


class NotConfigured(LlamaError):
    status = 409
    code = "llama_not_configured"
    default_message = ("modeldrop was started without --llama-server-url (MODELDROP_LLAMA_SERVER_URL), so there "
                       "is no llama-server to ask; give it the URL of llama-server in router mode")


class Unreachable(LlamaError):
    status = 503
    code = "llama_unreachable"
    default_message = "llama-server could not be reached"


class UnknownModel(LlamaError):
    status = 404
    code = "llama_unknown_model"
    default_message = "llama-server does not list this model"


class Refused(LlamaError):
    """llama-server answered with an error of its own: its status and message are kept."""

    def __init__(self, message: str, llama_status: int) -> None:
        super().__init__(message)
        self.llama_status = llama_status


@dataclasses.dataclass(frozen=True)
class ModelState:
    id: str
    state: str
    exit_code: int | None = None
    progress: float | None = None

    @classmethod
    def from_listing(cls, entry: dict[str, Any]) -> ModelState:
        raw = entry.get("status")
        status: dict[str, Any] = raw if isinstance(raw, dict) else {}
        value = str(status.get("value") or "unloaded")
        exit_code = _int_or_none(status.get("exit_code"))
        if status.get("failed") and value == "unloaded":
            value = "failed"
        return cls(str(entry.get("id")), value, exit_code)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "exit_code": self.exit_code, "progress": self.progress}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class LlamaClient:
    """Blocking calls (urllib): the worker calls them directly, the app through asyncio.to_thread. The event
    stream (`events`) is asyncio, so a page that follows it holds no thread."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.base = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """One JSON request; Unreachable when no HTTP answer came, Refused for an error answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                raw = response.read(MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            raise Refused(_error_message(exc), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"could not reach llama-server at {self.base}: {reason}") from None
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            raise LlamaError(f"llama-server at {self.base} answered {path} with something that is not JSON") from None
        return parsed if isinstance(parsed, dict) else {"data": parsed}

    # -- what llama-server lists ------------------------------------------------------------------------

    def states(self, reload: bool = False, timeout: float | None = None) -> dict[str, ModelState]:
        """Every model llama-server lists, by id; `reload` asks it to rescan its sources first."""
        listing = self.request("GET", "/models?reload=1" if reload else "/models", timeout=timeout)
        entries = listing.get("data", listing.get("models", []))
        found = {}
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("id") is not None:
                state = ModelState.from_listing(entry)
                found[state.id] = state
        return found

    def rescan(self) -> dict[str, ModelState]:
        """`GET /models?reload=1` (newer router builds re-read the models directory), then the listing."""
        self.request("GET", "/models?reload=1")
        return self.states()

    # -- load and unload --------------------------------------------------------------------------------

    def load(self, model: str) -> ModelState:
        """Asks llama-server to start the model; it answers at once and loads in the background.

        An id it does not know yet gets one rescan first (a model placed by hand, or by an older
        modeldrop). A model already running is no error: it is what was asked for.
        """
        try:
            self.request("POST", "/models/load", {"model": model})
        except Refused as exc:
            if exc.llama_status == 404:
                self.request("GET", "/models?reload=1")
                try:
                    self.request("POST", "/models/load", {"model": model})
                except Refused as again:
                    if again.llama_status == 404:
                        raise UnknownModel(
                            f"llama-server does not list {model!r}, even after a rescan: is it running in router "
                            "mode (no -m) with --models-dir set to modeldrop's models directory?") from None
                    raise
            elif "already" not in exc.message:
                raise
        return self.state_of(model)

    def unload(self, model: str) -> ModelState:
        """Asks llama-server to stop the model; one that is not running is no error."""
        try:
            self.request("POST", "/models/unload", {"model": model})
        except Refused as exc:
            if exc.llama_status == 404:
                raise UnknownModel(f"llama-server does not list {model!r}") from None
            if "not running" not in exc.message and "not loaded" not in exc.message:
                raise
        return self.state_of(model)

    def state_of(self, model: str) -> ModelState:
        return self.states().get(model) or ModelState(model, "absent")

    # -- after an install -------------------------------------------------------------------------------

    def notify_installed(self, model: str) -> dict[str, Any]:
        """The worker's call after an install: rescan, then check the model is listed. Never raises:
        trouble here is shown in the upload's status, it does not undo an install."""
        result: dict[str, Any] = {"notified": False, "listed": None, "error": None, "model_id": model}
        try:
            self.request("GET", "/models?reload=1")
            result["notified"] = True
            result["listed"] = model in self.states()
            if not result["listed"]:
                result["error"] = ("llama-server did not list the model after a rescan: it may be an older build "
                                   "without ?reload=1 (restart it), or not in router mode with --models-dir")
        except Unreachable as exc:
            result["error"] = exc.message
        except LlamaError as exc:
            result["error"] = f"llama-server at {self.base} refused the rescan: {exc.message}"
        return result

    # -- the event stream -------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """llama-server's `GET /models/sse`, one parsed `data:` JSON object at a time, until it closes.

        Unreachable if it cannot be reached, Refused (404) from builds without the stream.
        """
        parts = urllib.parse.urlsplit(self.base)
        secure = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl.create_default_context() if secure else None,
                                        limit=MAX_EVENT_LINE), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"could not reach llama-server at {self.base}: {exc or 'timed out'}") from None
        try:
            head = [f"GET {parts.path.rstrip('/')}/models/sse HTTP/1.1", f"Host: {parts.netloc}",
                    "Accept: text/event-stream", "Cache-Control: no-cache", "Connection: close"]
            head += [f"{name}: {value}" for name, value in self._headers().items() if name != "Accept"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            status, headers = await asyncio.wait_for(_read_head(reader), self.timeout)
            if status != 200:
                raise Refused(f"llama-server answered GET /models/sse with HTTP {status}", status)
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            data: list[str] = []
            async for line in _lines(reader, chunked):
                if not line:
                    if data:
                        with contextlib.suppress(ValueError):
                            event = json.loads("\n".join(data))
                            if isinstance(event, dict):
                                yield event
                        data = []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise Unreachable(f"llama-server's event stream at {self.base} broke off: {exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _error_message(exc: urllib.error.HTTPError) -> str:
    """llama-server's own message from an error answer ({"error": {"message": ...}}), else the status."""
    try:
        body = json.loads(exc.read(64 * 1024) or b"{}")
        detail = body.get("error") if isinstance(body, dict) else None
        message = detail.get("message") if isinstance(detail, dict) else detail
        if isinstance(message, str) and message:
            return message[:300]
    except (OSError, ValueError):
        pass
    return f"HTTP {exc.code}"


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = (await reader.readline()).decode("latin-1")
    pieces = status_line.split(" ", 2)
    if len(pieces) < 2 or not pieces[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return int(pieces[1]), headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()


async def _lines(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[str]:
    """The body's lines (without their ends), from a chunked or a plain body read to its close."""
    pending = b""
    while True:
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            block = await reader.readexactly(size + 2)
            block = block[:-2]
        else:
            block = await reader.read(64 * 1024)
            if not block:
                return
        pending += block
        if len(pending) > MAX_EVENT_LINE:
            raise ValueError("an event line is too long")
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", "replace")


# -- the view the page follows ------------------------------------------------------------------------------


class LlamaWatch:
    """One follower of llama-server's event stream per server process, shared by every page that listens.

    It runs while someone listens: it reads the listing, then applies each event of `GET /models/sse` to it
    (re-reading the listing after a rescan, a removal or an end of loading), and re-reads it every
    `refresh_interval` anyway; without the stream (an older build, or llama-server down) it polls every
    `poll_interval`. Listeners get the whole view each time it changes (`snapshot()`).
    """

    def __init__(self, client: LlamaClient, poll_interval: float = 2.0, refresh_interval: float = 15.0) -> None:
        self.client = client
        self.poll_interval = poll_interval
        self.refresh_interval = refresh_interval
        self.reachable: bool | None = None
        self.error: str | None = None
        self.models: dict[str, ModelState] = {}
        self.version = 0
        self._changed = asyncio.Event()
        self._listeners = 0
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"llama_server": {"configured": True, "reachable": self.reachable, "error": self.error},
                "models": {model: state.to_json() for model, state in sorted(self.models.items())}}

    def _publish(self, reachable: bool, error: str | None, models: dict[str, ModelState]) -> None:
        if (reachable, error, models) != (self.reachable, self.error, self.models):
            self.reachable, self.error, self.models = reachable, error, models
            self.version += 1
            self._changed.set()
            self._changed = asyncio.Event()

    async def refresh(self) -> None:
        try:
            models = await asyncio.to_thread(self.client.states, False, min(self.client.timeout, 5.0))
        except LlamaError as exc:
            self._publish(False, exc.message, {})
        else:
            self._publish(True, None, models)

    def apply(self, event: dict[str, Any]) -> bool:
        """One event of llama-server's stream applied to the view. False when the listing should be re-read:
        an event about the list itself, or the end of a load or unload (only the listing says `failed`)."""
        model, kind, data = event.get("model"), event.get("event"), event.get("data")
        if kind not in ("model_status", "status_change") or not isinstance(data, dict) or model not in self.models:
            return False
        value = str(data.get("status") or "")
        exit_code = _int_or_none(data.get("exit_code"))
        progress = data.get("progress")
        fraction = progress.get("value") if isinstance(progress, dict) else None
        if value == "unloaded" and exit_code:
            value = "failed"
        elif value != "failed":
            exit_code = None  # a clean stop's 0 says nothing the state does not
        if value not in STATES:
            return False
        state = ModelState(str(model), value, exit_code,
                           float(fraction) if isinstance(fraction, (int, float)) and value == "loading" else None)
        self._publish(True, None, {**self.models, state.id: state})
        return value == "loading"

    async def _follow(self) -> None:
        while True:
            await self.refresh()
            if self.reachable:
                try:
                    async for event in self.client.events():
                        if not self.apply(event):
                            await self.refresh()
                except Refused:
                    pass  # a build without the stream: polling it is
                except LlamaError as exc:
                    log.debug("llama-server's event stream: %s", exc.message)
            await asyncio.sleep(self.poll_interval)

    async def _refresh_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh()

    async def _run(self) -> None:
        follow = asyncio.ensure_future(self._follow())
        refresh = asyncio.ensure_future(self._refresh_now_and_then())
        try:
            await asyncio.gather(follow, refresh)
        finally:
            for task in (follow, refresh):
                task.cancel()
            await asyncio.gather(follow, refresh, return_exceptions=True)

    async def listen(self, stopping: Callable[[], bool],
                     heartbeat: float = 15.0) -> AsyncIterator[dict[str, Any] | None]:
        """The view now, then each time it changes; None every `heartbeat` seconds of quiet (for keep-alive
        comments) and a check of `stopping` every second, so a server shutting down is not held up."""
        self._listeners += 1
        starting = self._task is None or self._task.done()
        if starting:
            self._task = asyncio.ensure_future(self._run())
        try:
            if starting or self.reachable is None:
                await self.refresh()  # what was seen before nobody listened may be stale
            seen = self.version
            yield self.snapshot()
            quiet = 0.0
            while not stopping():
                changed = self._changed
                if self.version == seen:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(changed.wait(), 1.0)
                if self.version != seen:
                    seen = self.version
                    quiet = 0.0
                    yield self.snapshot()
                else:
                    quiet += 1.0
                    if quiet >= heartbeat:
                        quiet = 0.0
                        yield None
        finally:
            self._listeners -= 1
            if self._listeners == 0 and self._task is not None:
                self._task.cancel()  # not awaited: this may run while the listener itself is cancelled
                self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
