"""Helpers for the reliability scenarios: hashing, a models-directory watcher, slow real clients.

Nothing here fakes the server: clients speak HTTP to real `modeldrop serve` processes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tusclient.client import TusClient as TuspyClient
from tusclient.exceptions import TusCommunicationError

from tests.e2e.clients import NodeUpload, require_node
from tests.ggufgen import write_model
from tests.support.processes import wait_for
from tests.worker.uploads import ModelsWatcher, file_sha256

sha256_file = file_sha256

HERE = Path(__file__).resolve().parent
SLOW_UPLOAD = HERE / "js" / "slow_upload.mjs"
MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


def make_models(directory: Path, count: int, mib: float, prefix: str) -> list[Path]:
    """`count` real GGUF models of about `mib` MiB each, all with different bytes (ramps of different lengths)."""
    directory.mkdir(parents=True, exist_ok=True)
    elements = int(mib * MIB / 4 / 2)
    return [write_model(directory / f"{prefix}-{index:02d}.gguf", tensors=2, tensor_elems=elements + 1024 * index)
            for index in range(count)]


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def status_of(base_url: str, url_or_id: str) -> dict[str, Any] | None:
    """GET /api/uploads/<id>, or None while the server does not answer (it may be restarting)."""
    try:
        response = httpx.get(f"{base_url}/api/uploads/{upload_id(url_or_id)}", timeout=10)
    except httpx.HTTPError:
        return None
    return dict(response.json()) if response.status_code == 200 else None


def wait_terminal(base_url: str, url_or_id: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = status_of(base_url, url_or_id)
        return status if status and status["state"] in ("installed", "failed") else None
    return dict(wait_for(done, timeout, f"upload {upload_id(url_or_id)} to be installed or failed", interval=0.2))


def watcher_problems(watcher: ModelsWatcher, sources: list[Path]) -> list[str]:
    """What llama-server could have seen wrong: a file not at its final size at first sight, foreign bytes."""
    try:
        watcher.check({path.name: (path.stat().st_size, file_sha256(path)) for path in sources})
    except AssertionError as exc:
        return [f"models watcher: {exc}"]
    return []


class SlowNodeUpload(NodeUpload):
    """tus-js-client (tests/reliability/js/slow_upload.mjs): chunks, a pause before each PATCH, retries."""

    def __init__(self, file: Path, endpoint: str, *, chunk_size: int, delay_ms: int,
                 retry_delays: list[int], metadata: dict[str, str] | None = None) -> None:
        argv = [require_node(), str(SLOW_UPLOAD), "--endpoint", endpoint, "--file", str(file),
                "--chunk-size", str(chunk_size), "--delay-ms", str(delay_ms),
                "--retry-delays", ",".join(map(str, retry_delays))]
        for key, value in (metadata or {}).items():
            argv += ["--metadata", f"{key}={value}"]
        self.events: list[dict[str, Any]] = []
        self.output: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(argv, cwd=HERE / "js", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def offsets(self) -> tuple[list[int], list[int]]:
        """(offsets the server accepted with 204 to a PATCH, offsets HEAD answered when resuming), in order."""
        accepted, resumed = [], []
        for event in self.of("response"):
            if event["offset"] is None:
                continue
            if event["method"] == "PATCH" and event["status"] == 204:
                accepted.append(int(event["offset"]))
            elif event["method"] == "HEAD" and event["status"] == 200:
                resumed.append(int(event["offset"]))
        return accepted, resumed


@dataclass
class Trace:
    """What one client saw: durable offsets promised (204) and offsets found when resuming (HEAD)."""

    name: str
    events: list[tuple[str, int]] = field(default_factory=list)  # ("accepted"|"resumed", offset), in order
    url: str | None = None
    error: str | None = None
    done: bool = False

    def check_resumes(self) -> list[str]:
        """Invariant 2: every resume finds at least the last offset a 204 promised."""
        problems, promised = [], 0
        for kind, offset in self.events:
            if kind == "accepted":
                promised = max(promised, offset)
            elif offset < promised:
                problems.append(f"{self.name}: resumed at {offset} after the server had promised {promised}")
        return problems

    def resumed_above_zero(self) -> int:
        return sum(1 for kind, offset in self.events if kind == "resumed" and offset > 0)


def node_trace(name: str, upload: SlowNodeUpload) -> Trace:
    trace = Trace(name)
    for event in upload.of("response"):
        if event["offset"] is None:
            continue
        if event["method"] == "PATCH" and event["status"] == 204:
            trace.events.append(("accepted", int(event["offset"])))
        elif event["method"] == "HEAD" and event["status"] == 200:
            trace.events.append(("resumed", int(event["offset"])))
    successes = upload.of("success")
    trace.done = bool(successes)
    trace.url = str(successes[-1]["url"]) if successes else None
    return trace


def tuspy_slow_upload(endpoint: str, file: Path, trace: Trace, *, chunk_size: int, delay: float,
                      deadline: float, metadata: dict[str, str] | None = None) -> None:
    """tuspy in a loop that survives server restarts: on any error, wait, HEAD for the offset, go on.

    tuspy's own `retries` covers one failing chunk; a restart can take longer, so the loop retries too.
    """
    client = TuspyClient(endpoint)
    uploader = None
    while time.monotonic() < deadline:
        try:
            if uploader is None:
                uploader = client.uploader(file_path=str(file), chunk_size=chunk_size, retries=3, retry_delay=0.3,
                                           metadata={"filename": file.name, **(metadata or {})})
                uploader.get_offset = _recording_offsets(uploader.get_offset, trace)  # tuspy's retries HEAD too
            if uploader.offset >= uploader.get_file_size():
                trace.done = True
                return
            time.sleep(delay)
            uploader.upload_chunk()
            trace.url = uploader.url  # tuspy creates the upload with its first chunk
            trace.events.append(("accepted", uploader.offset))
        except Exception as exc:  # noqa: BLE001 - the server is down or restarting: whatever broke, retry
            trace.error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3 + random.random() * 0.5)
            if uploader is not None:
                with contextlib.suppress(TusCommunicationError, OSError):
                    uploader.offset = uploader.get_offset()
    trace.error = f"did not finish in time (last error: {trace.error})"


def _recording_offsets(get_offset: Callable[[], int], trace: Trace) -> Callable[[], int]:
    def recorded() -> int:
        offset = get_offset()
        trace.events.append(("resumed", offset))
        return offset
    return recorded


def raw_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; header values go on the wire as given (latin-1)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value.encode("latin-1", "replace"))
        if body and not any(name.lower() == "content-length" for name in headers):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def snapshot(*roots: Path) -> dict[str, int]:
    """Every file under roots with its size (for 'nothing was written outside the data dirs')."""
    found = {}
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    found[path] = os.stat(path).st_size
                except FileNotFoundError:
                    pass
    return found


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
