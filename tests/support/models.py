"""Model files for tests, and the models directory as llama-server would see it.

    sources = make_models(tmp_path, 4, 24, "crash")      # real GGUF files, all with different bytes
    sha256_of(path)
    assert_installed(server, location, source)           # installed, byte for byte
    with ModelsWatcher(server.models_dir) as watcher:    # polls models/ every 5 ms meanwhile
        ...
    watcher.check({name: (size, sha256)})               # nothing ever seen partial, foreign or replaced
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ggufgen import write_model
from tests.support.disk import CreatedEntries
from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import TusClient

MIB = 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as source:
        while block := source.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def make_models(directory: Path, count: int, mib: float, prefix: str) -> list[Path]:
    """`count` real GGUF models of about `mib` MiB each, all with different bytes (ramps of different lengths)."""
    directory.mkdir(parents=True, exist_ok=True)
    elements = int(mib * MIB / 4 / 2)
    return [write_model(directory / f"{prefix}-{index:02d}.gguf", tensors=2, tensor_elems=elements + 1024 * index)
            for index in range(count)]


def assert_installed(server: ServerProcess, upload: str, source: Path, timeout: float = 30) -> dict[str, Any]:
    """The upload ends installed, and models/ holds the source's bytes under its final name; the status."""
    status = TusClient(server.url).wait_installed(upload, timeout)
    digest = sha256_of(source)
    assert sha256_of(server.models_dir / status["final_name"]) == digest
    assert status["sha256"] == digest
    return status


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
        # publishing renames into models/: a name created there in place is a file being written where
        # llama-server can see it, however briefly (a poll every 5 ms could miss it)
        self.created_in_place = CreatedEntries(self.models_dir, moves=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="models-watcher", daemon=True)

    def __enter__(self) -> ModelsWatcher:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.created_in_place.__enter__()
        self._thread.start()
        wait_for(lambda: self.scans > 0, 5, "the watcher's first scan")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.created_in_place.__exit__()

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
        made_here = [name for name in self.created_in_place.read() if name not in ignored]
        assert not made_here, f"created in models/ instead of renamed in: {made_here}"
        for sighting in self.files():
            if sighting.relpath in ignored:
                continue
            assert sighting.relpath in expected, f"unexpected file in models/: {sighting}"
            size, sha256 = expected[sighting.relpath]
            assert sighting.size == size, f"{sighting.relpath} was first seen with {sighting.size} of {size} bytes"
            path = self.models_dir / sighting.relpath
            with open(path, "rb", buffering=0) as source:
                assert os.fstat(source.fileno()).st_ino == sighting.inode, f"{path} was replaced after first sight"
            assert sha256_of(path) == sha256, f"{sighting.relpath} was visible with the wrong content"

    def problems(self, sources: list[Path]) -> list[str]:
        """check() for files installed under their sources' names, as a list of problems (empty: none)."""
        try:
            self.check({path.name: (path.stat().st_size, sha256_of(path)) for path in sources})
        except AssertionError as exc:
            return [f"models watcher: {exc}"]
        return []
