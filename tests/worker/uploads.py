"""Minimal tus 1.0 client and a models-directory watcher for the finalize pipeline tests.

Private to these tests (tests/support/tus.py did not exist when they were written): plain http.client,
one request per call, so a test can stop between any two requests (kill a process, delete a file).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import wait_for

CHUNK = 64 * 1024 * 1024


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as source:
        while block := source.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items())


class TusClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 120) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                auth: bool = True) -> Reply:
        sent = {"Tus-Resumable": "1.0.0", **(headers or {})}
        if self.token and auth:
            sent["Authorization"] = f"Bearer {self.token}"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, blocksize=1 << 20)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    # -- tus ------------------------------------------------------------------------------------------

    def create(self, filename: str, length: int, sha256: str | None = None, **metadata: str) -> str:
        fields = {"filename": filename, **metadata}
        if sha256:
            fields["sha256"] = sha256
        reply = self.request("POST", "/files/", {"Upload-Length": str(length),
                                                 "Upload-Metadata": encode_metadata(fields)})
        assert reply.status == 201, (reply.status, reply.body)
        return reply.headers["location"].rstrip("/").rsplit("/", 1)[-1]

    def patch(self, upload_id: str, offset: int, data: bytes) -> Reply:
        return self.request("PATCH", f"/files/{upload_id}", {"Upload-Offset": str(offset),
                                                             "Content-Type": "application/offset+octet-stream"}, data)

    def head(self, upload_id: str) -> Reply:
        return self.request("HEAD", f"/files/{upload_id}")

    def send(self, upload_id: str, path: Path, chunk: int = CHUNK,
             between: Callable[[int], None] | None = None) -> Reply:
        """PATCHes the file from offset 0 in `chunk`-sized requests; `between(offset)` runs between them."""
        size = path.stat().st_size
        offset = 0
        reply = Reply(0, {}, b"")
        with open(path, "rb") as source:
            while offset < size:
                reply = self.patch(upload_id, offset, source.read(chunk))
                if reply.status != 204:
                    return reply
                offset = int(reply.headers["upload-offset"])
                if between is not None and offset < size:
                    between(offset)
        return reply

    def upload(self, path: Path, filename: str | None = None, sha256: str | None = None, chunk: int = CHUNK) -> str:
        upload_id = self.create(filename or path.name, path.stat().st_size, sha256)
        reply = self.send(upload_id, path, chunk)
        assert reply.status == 204, (reply.status, reply.body)
        return upload_id

    # -- modeldrop API --------------------------------------------------------------------------------

    def get_json(self, path: str) -> Any:
        reply = self.request("GET", path)
        assert reply.status == 200, (path, reply.status, reply.body)
        return reply.json()

    def status(self, upload_id: str) -> dict[str, Any]:
        return dict(self.get_json(f"/api/uploads/{upload_id}"))

    def wait_for_state(self, upload_id: str, states: Iterable[str], timeout: float = 30,
                       seen: list[str] | None = None, interval: float = 0.02) -> dict[str, Any]:
        """Polls the status until its state is one of `states`; appends every new state to `seen`."""
        wanted = tuple(states)
        last: dict[str, Any] = {}

        def reached() -> bool:
            last.clear()
            last.update(self.status(upload_id))
            if seen is not None and (not seen or seen[-1] != last["state"]):
                seen.append(last["state"])
            return last["state"] in wanted

        try:
            wait_for(reached, timeout, f"upload {upload_id} to become {'/'.join(wanted)}", interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last status: {last}") from None
        return dict(last)


# -- the models directory, as llama-server would see it ---------------------------------------------------


@dataclass
class Sighting:
    """The first time the watcher saw a name (or a new inode under that name) in the models directory."""

    relpath: str
    inode: int
    size: int
    is_dir: bool
    children: tuple[str, ...] = ()


@dataclass
class ModelsWatcher:
    """Polls the models directory (and one level of subdirectories) every `interval` seconds.

    Records what each entry looked like when it first appeared, so a test can prove nothing was ever
    visible with a partial size, unverified content, or a split set missing shards.
    """

    models_dir: Path
    interval: float = 0.005
    sightings: dict[tuple[str, int], Sighting] = field(default_factory=dict)
    scans: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="models-watcher", daemon=True)

    def __enter__(self) -> ModelsWatcher:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        wait_for(lambda: self.scans > 0, 5, "the watcher's first scan")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._scan(self.models_dir, "")
            self.scans += 1
            time.sleep(self.interval)

    def _scan(self, directory: Path, prefix: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                stat = entry.stat(follow_symlinks=False)
                is_dir = entry.is_dir(follow_symlinks=False)
                children = tuple(sorted(os.listdir(entry.path))) if is_dir else ()
            except FileNotFoundError:
                continue
            relpath = prefix + entry.name
            key = (relpath, stat.st_ino)
            if key not in self.sightings:
                self.sightings[key] = Sighting(relpath, stat.st_ino, stat.st_size, is_dir, children)
            if is_dir and not prefix:
                self._scan(Path(entry.path), relpath + "/")

    def files(self) -> list[Sighting]:
        return [s for s in self.sightings.values() if not s.is_dir]

    def check(self, expected: dict[str, tuple[int, str]], ignore: Iterable[str] = ()) -> None:
        """Every file ever seen is an expected one, had its final size at first sight, and (by inode) the
        expected sha256. `expected` maps relative path -> (size, sha256)."""
        ignored = set(ignore)
        for sighting in self.files():
            if sighting.relpath in ignored:
                continue
            assert sighting.relpath in expected, f"unexpected file in models/: {sighting}"
            size, sha256 = expected[sighting.relpath]
            assert sighting.size == size, f"{sighting.relpath} was first seen with {sighting.size} of {size} bytes"
            path = self.models_dir / sighting.relpath
            with open(path, "rb", buffering=0) as source:
                assert os.fstat(source.fileno()).st_ino == sighting.inode, f"{path} was replaced after first sight"
            assert file_sha256(path) == sha256, f"{sighting.relpath} was visible with the wrong content"
