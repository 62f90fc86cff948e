"""server/tus/assemble.py on a tmp store: a final that cannot be made is not left behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server import errors
from server.store.filestore import FileStore
from server.store.info import UploadInfo
from server.tus import assemble


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    created = FileStore(tmp_path / "staging", durable=False)
    created.prepare()
    return created


def complete_partial(store: FileStore, data: bytes) -> UploadInfo:
    info = store.create(UploadInfo(id=store.new_id(), length=len(data), concat="partial", created_at=time.time()))
    store.paths(info.id).data.write_bytes(data)
    return store.load(info.id)


def test_assemble_a_partial_gone_mid_copy_is_410_and_leaves_no_final(store: FileStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = complete_partial(store, b"GGUF" + bytes(100)), complete_partial(store, bytes(100))
    final = UploadInfo(id=store.new_id(), length=204, filename="m.gguf", created_at=time.time(), concat="final",
                       parts=(first.id, second.id))
    copy = assemble._copy

    def copy_then_lose_the_second(fd_in: int, fd_out: int, count: int) -> int:
        copied = copy(fd_in, fd_out, count)
        store.paths(second.id).data.unlink(missing_ok=True)  # expired or deleted meanwhile
        return copied

    monkeypatch.setattr(assemble, "_copy", copy_then_lose_the_second)
    with pytest.raises(errors.HTTPError) as caught:
        assemble.fill_final(store, assemble.create_final(store, final, [first, second]), [first, second])
    assert caught.value.status == 410 and second.id in caught.value.message
    # no final left in receiving: it would hold an upload slot and its disk reservation
    assert final.id not in store.list_ids() and not store.paths(final.id).data.exists()
    assert store.admission_figures() == (1, 0)  # only the first partial, still waiting for a final


def test_assemble_frees_the_partials_once_the_final_holds_their_bytes(store: FileStore) -> None:
    first, second = complete_partial(store, b"GGUF" + bytes(10)), complete_partial(store, b"abc")
    final = UploadInfo(id=store.new_id(), length=17, filename="m.gguf", created_at=time.time(), concat="final",
                       parts=(first.id, second.id))
    made = assemble.fill_final(store, assemble.create_final(store, final, [first, second]), [first, second])
    assert store.paths(made.id).data.read_bytes() == b"GGUF" + bytes(10) + b"abc"
    assert store.read_status(made.id)["state"] == "queued"
    for part in (first, second):
        with pytest.raises(errors.HTTPError) as caught:
            store.load(part.id)
        assert caught.value.status == 410 and made.id in caught.value.message
