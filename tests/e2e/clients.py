"""Real tus clients for the end-to-end tests: tus-js-client in node (tests/js/upload.mjs) and tuspy.

`NodeUpload` runs upload.mjs in the background and collects its JSON lines as they arrive, so a test
can act in the middle of an upload (kill the server once bytes flow) and assert on what the client saw.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from tusclient.client import TusClient
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader.uploader import Uploader

from tests.support.processes import REPO

JS_DIR = REPO / "tests" / "js"
UPLOAD_SCRIPT = JS_DIR / "upload.mjs"
Event = dict[str, Any]


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup.sh test installs it)")
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `npm ci` in tests/js (scripts/setup.sh test does)")
    return node


class NodeUpload:
    """`node upload.mjs …` in the background; `events` fills up with the script's JSON lines."""

    def __init__(self, file: Path, endpoint: str | None = None, *, chunk_size: int | None = None,
                 parallel: int | None = None, retry_delays: list[int] | None = None,
                 headers: dict[str, str] | None = None, metadata: dict[str, str] | None = None,
                 url_storage: Path | None = None, upload_url: str | None = None, stop_after: int | None = None) -> None:
        argv = [require_node(), str(UPLOAD_SCRIPT), "--file", str(file)]
        named = {"--endpoint": endpoint, "--chunk-size": chunk_size, "--parallel": parallel,
                 "--url-storage": url_storage, "--upload-url": upload_url, "--stop-after": stop_after,
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
    return TusClient(endpoint).uploader(file_path=str(file), chunk_size=chunk_size, url=url,
                                        metadata={"filename": file.name}, store_url=storage is not None,
                                        url_storage=storage, retries=retries, retry_delay=retry_delay)
