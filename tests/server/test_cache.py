"""server/store/cache.py: records kept for HEAD are dropped as soon as any process touches the upload."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modeldrop.server.store.cache import UploadCache
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import State
from tests.support.loop import run_scenario


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    created = FileStore(tmp_path / "staging", durable=False)
    created.prepare()
    return created


def new_upload(store: FileStore) -> UploadInfo:
    return store.create(UploadInfo(id=store.new_id(), length=100, filename="m.gguf", created_at=time.time()))


def remember(cache: UploadCache, store: FileStore, upload_id: str) -> None:
    """A fresh read of the record, kept: the way HEAD fills the cache."""
    cache.put(store.load(upload_id), cache.token())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the change was never reported"
        await asyncio.sleep(0.01)


def append_from_another_process(path: Path, data: bytes) -> None:
    subprocess.run([sys.executable, "-c", f"open({str(path)!r}, 'ab').write({data!r})"], check=True)


def test_cache_keeps_a_record_until_another_process_writes_the_upload(store: FileStore) -> None:
    async def scenario() -> None:
        cache = UploadCache(store.uploads_dir)
        info, other = new_upload(store), new_upload(store)
        remember(cache, store, info.id)
        remember(cache, store, other.id)
        assert cache.get(info.id) is not None
        append_from_another_process(store.paths(info.id).data, b"GGUF")
        await until(lambda: cache.get(info.id) is None)
        assert cache.get(other.id) is not None  # a change to one upload leaves the others cached
        remember(cache, store, info.id)
        assert cache.get(info.id).offset == 4  # type: ignore[union-attr]
        cache.close()

    run_scenario(scenario)


def test_cache_drops_on_record_changes_and_removal(store: FileStore) -> None:
    async def scenario() -> None:
        cache = UploadCache(store.uploads_dir)
        info = new_upload(store)
        remember(cache, store, info.id)
        store.write_status(info.id, State.QUEUED)  # a finalizer's atomic rename
        await until(lambda: cache.get(info.id) is None)
        remember(cache, store, info.id)
        store.terminate(info.id, "gone")
        await until(lambda: cache.get(info.id) is None)
        cache.close()

    run_scenario(scenario)


def test_cache_refuses_a_read_that_a_reported_change_may_postdate(store: FileStore) -> None:
    async def scenario() -> None:
        cache = UploadCache(store.uploads_dir)
        info = new_upload(store)
        token = cache.token()
        stale = store.load(info.id)  # read, then the upload changes before the read is kept
        append_from_another_process(store.paths(info.id).data, b"GGUF")
        await until(lambda: cache.token() > token)
        cache.put(stale, token)
        assert cache.get(info.id) is None
        remember(cache, store, info.id)
        assert cache.get(info.id).offset == 4  # type: ignore[union-attr]
        cache.close()

    run_scenario(scenario)


def test_cache_disabled_keeps_nothing(store: FileStore) -> None:
    async def scenario() -> None:
        cache = UploadCache(store.uploads_dir, enabled=False)
        info = new_upload(store)
        remember(cache, store, info.id)
        assert cache.get(info.id) is None

    run_scenario(scenario)


def test_cache_turns_itself_off_when_the_directory_goes(store: FileStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = UploadCache(store.uploads_dir)
        info = new_upload(store)
        remember(cache, store, info.id)
        store.uploads_dir.rename(tmp_path / "moved")
        await until(lambda: not cache.enabled)
        assert cache.get(info.id) is None
        assert cache.token() == -1

    run_scenario(scenario)
