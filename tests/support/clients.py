"""Real tus clients: tus-js-client in node (tests/js/upload.mjs) and tuspy, and what they saw.

`NodeUpload` runs upload.mjs in the background and collects its JSON lines as they arrive, so a test
can act in the middle of an upload (kill the server once bytes flow) and assert on what the client saw.
`Trace` records, for either client, every offset a 204 promised and every offset a resume found.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tusclient.client import TusClient as TuspyClient
from tusclient.exceptions import TusCommunicationError
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader.uploader import Uploader

from tests.support.processes import REPO

JS_DIR = REPO / "tests" / "js"
UPLOAD_SCRIPT = JS_DIR / "upload.mjs"
Event = dict[str, Any]
# tus-js-client's retryDelays (ms) that outlast any number of server restarts in a test: about a minute of retries
RETRY_THROUGH_RESTARTS = [200, 500, 1000] + [1000] * 60


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup.sh test installs it)")
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `npm ci` in tests/js (scripts/setup.sh test does)")
    return node


class NodeUpload:
    """`node upload.mjs …` in the background; `events` fills up with the script's JSON lines.

    delay_ms waits before each PATCH (with a chunk size, so a fault a test injects lands mid-upload); protocol is
    tus-js-client's (`ietf-draft-03` or `ietf-draft-05` for Resumable Uploads for HTTP)."""

    def __init__(self, file: Path, endpoint: str | None = None, *, chunk_size: int | None = None,
                 parallel: int | None = None, retry_delays: list[int] | None = None,
                 headers: dict[str, str] | None = None, metadata: dict[str, str] | None = None,
                 url_storage: Path | None = None, upload_url: str | None = None, stop_after: int | None = None,
                 delay_ms: int | None = None, protocol: str | None = None) -> None:
        argv = [require_node(), str(UPLOAD_SCRIPT), "--file", str(file)]
        named = {"--endpoint": endpoint, "--chunk-size": chunk_size, "--parallel": parallel,
                 "--url-storage": url_storage, "--upload-url": upload_url, "--stop-after": stop_after,
                 "--delay-ms": delay_ms, "--protocol": protocol,
                 "--retry-delays": ",".join(map(str, retry_delays)) if retry_delays is not None else None}
        for flag, value in named.items():
            if value is not None:
                argv += [flag, str(value)]
        for name, value in (headers or {}).items():
            argv += ["--header", f"{name}:{value}"]
        for key, value in (metadata or {}).items():
            argv += ["--metadata", f"{key}={value}"]
        self.events: list[Event] = []
        self.output: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(argv, cwd=JS_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.output.append(line.rstrip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def of(self, kind: str) -> list[Event]:
        with self._changed:
            return [event for event in self.events if event["event"] == kind]

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"tus-js-client did not finish in {timeout}s:\n{self.transcript()}") from None
        self._reader.join(5)
        return code

    def finish(self, timeout: float = 60) -> str:
        """Waits for success; returns the upload URL."""
        code = self.wait(timeout)
        successes = self.of("success")
        assert code == 0 and successes, f"tus-js-client failed (exit {code}):\n{self.transcript()}"
        return str(successes[-1]["url"])

    def transcript(self, last: int = 40) -> str:
        with self._changed:
            lines = [json.dumps(event) for event in self.events if event["event"] != "progress"] + self.output
        return "\n".join(lines[-last:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def upload_with_node(file: Path, endpoint: str, timeout: float = 60, **options: Any) -> NodeUpload:
    """Runs tus-js-client to the end; fails the test unless it reports success."""
    upload = NodeUpload(file, endpoint, **options)
    try:
        upload.finish(timeout)
    finally:
        upload.stop()
    return upload


def tuspy_uploader(endpoint: str, file: Path, *, chunk_size: int, url_storage: Path | None = None,
                   url: str | None = None, retries: int = 0, retry_delay: float = 0.5) -> Uploader:
    """tuspy always with a chunk size: without one it reads the whole file into memory."""
    storage = FileStorage(str(url_storage)) if url_storage is not None else None  # type: ignore[no-untyped-call]
    return TuspyClient(endpoint).uploader(file_path=str(file), chunk_size=chunk_size, url=url,
                                          metadata={"filename": file.name}, store_url=storage is not None,
                                          url_storage=storage, retries=retries, retry_delay=retry_delay)


# -- what a client saw, across faults --------------------------------------------------------------


@dataclass
class Trace:
    """What one client saw: durable offsets promised (204) and offsets found when resuming (HEAD)."""

    name: str
    events: list[tuple[str, int]] = field(default_factory=list)  # ("accepted"|"resumed", offset), in order
    url: str | None = None
    error: str | None = None
    done: bool = False

    def check_resumes(self) -> list[str]:
        """Every resume finds at least the last offset a 204 promised."""
        problems, promised = [], 0
        for kind, offset in self.events:
            if kind == "accepted":
                promised = max(promised, offset)
            elif offset < promised:
                problems.append(f"{self.name}: resumed at {offset} after the server had promised {promised}")
        return problems

    def resumed_above_zero(self) -> int:
        return sum(1 for kind, offset in self.events if kind == "resumed" and offset > 0)


def node_trace(name: str, upload: NodeUpload) -> Trace:
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
