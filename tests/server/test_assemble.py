"""server/store/concat.py on a tmp store: a final that cannot be made is not left behind; and, with the app
called in-process so the moment can be held open, a DELETE of a partial while its final is being created."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modeldrop.server import errors
from modeldrop.server.admission import Admission
from modeldrop.server.store.errors import StoreError
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store import concat
from tests.support.app import make_app, settings_for
from tests.support.loop import run_scenario
from tests.support.tus import PATCH_TYPE, TUS_VERSION, encode_metadata, gguf_bytes


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
    copy = concat._copy

    def copy_then_lose_the_second(fd_in: int, fd_out: int, count: int) -> int:
        copied = copy(fd_in, fd_out, count)
        store.paths(second.id).data.unlink(missing_ok=True)  # expired or deleted meanwhile
        return copied

    monkeypatch.setattr(concat, "_copy", copy_then_lose_the_second)
    with pytest.raises(StoreError) as caught:
        concat.fill_final(store, concat.create_final(store, final, [first, second]), [first, second])
    assert errors.from_store(caught.value).status == 410 and second.id in caught.value.message
    # no final left in receiving: it would hold an upload slot and its disk reservation
    assert final.id not in store.list_ids() and not store.paths(final.id).data.exists()
    assert store.admission_figures() == (1, 0)  # only the first partial, still waiting for a final


def test_assemble_frees_the_partials_once_the_final_holds_their_bytes(store: FileStore) -> None:
    first, second = complete_partial(store, b"GGUF" + bytes(10)), complete_partial(store, b"abc")
    final = UploadInfo(id=store.new_id(), length=17, filename="m.gguf", created_at=time.time(), concat="final",
                       parts=(first.id, second.id))
    made = concat.fill_final(store, concat.create_final(store, final, [first, second]), [first, second])
    assert store.paths(made.id).data.read_bytes() == b"GGUF" + bytes(10) + b"abc"
    assert store.state(made.id) == "queued"
    for part in (first, second):
        with pytest.raises(StoreError) as caught:
            store.load(part.id)
        assert errors.from_store(caught.value).status == 410 and made.id in caught.value.message


def test_assemble_a_partial_cannot_be_deleted_between_its_claim_and_its_final(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim names a final whose record is only created after admission; a DELETE in between must not
    take the partial (it did: 204, and the final then answered 410 or was made from an unlinked file)."""
    run_scenario(lambda: _delete_while_the_final_is_admitted(tmp_path, monkeypatch))


async def _delete_while_the_final_is_admitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path, lock_timeout=5.0)
    admitting, proceed = threading.Event(), threading.Event()
    admit = Admission.admit

    def admit_slowly(self: Admission, length: int | None, create: Any) -> Any:
        if length == len(model):  # the final's admission, not the partials'
            admitting.set()
            proceed.wait(10)
        return admit(self, length, create)

    monkeypatch.setattr(Admission, "admit", admit_slowly)
    model = gguf_bytes()
    tus = {"Tus-Resumable": TUS_VERSION}
    transport = httpx.ASGITransport(app=make_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        parts = []
        for piece in (model[:100], model[100:]):
            created = await http.post("/files/", headers={**tus, "Upload-Concat": "partial",
                                                          "Upload-Length": str(len(piece))})
            assert created.status_code == 201, created.text
            parts.append("/files/" + created.headers["Location"].rsplit("/", 1)[-1])
            patched = await http.patch(parts[-1], content=piece, headers={
                **tus, "Content-Type": PATCH_TYPE, "Upload-Offset": "0"})
            assert patched.status_code == 204, patched.text
        final = asyncio.ensure_future(http.post("/files/", headers={
            **tus, "Upload-Concat": "final;" + " ".join(parts),
            "Upload-Metadata": encode_metadata({"filename": "m.gguf"})}))
        while not admitting.is_set():
            await asyncio.sleep(0.01)
        deleting = asyncio.ensure_future(http.delete(parts[1], headers=tus))
        await asyncio.sleep(0.3)  # the DELETE is in, waiting or answered
        proceed.set()
        created, deleted = await final, await deleting
        assert created.status_code == 201, created.text
        assert deleted.status_code in (204, 409, 410), deleted.text
        if deleted.status_code == 204:  # freed once the final held every byte (its copy is that quick): correct
            head = await http.head("/files/" + created.headers["Location"].rsplit("/", 1)[-1], headers=tus)
            assert head.headers["Upload-Offset"] == str(len(model)), head.headers


def test_assemble_does_not_write_through_a_final_data_file_planted_as_a_link(store: FileStore,
                                                                             tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    part = complete_partial(store, b"GGUF" + bytes(100))
    final = concat.create_final(store, UploadInfo(id=store.new_id(), length=104, filename="m.gguf",
                                                  created_at=time.time(), concat="final", parts=(part.id,)),
                                [part])
    data = store.paths(final.id).data
    data.unlink()
    data.symlink_to(outside)
    with pytest.raises(StoreError) as caught:
        concat.fill_final(store, final, [part])
    assert errors.from_store(caught.value).status < 500 and "link" in caught.value.message
    assert outside.read_bytes() == b"precious"


def test_assemble_does_not_read_a_partial_through_a_planted_link(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"GGUF" + b"secret" * 10)
    part = complete_partial(store, b"GGUF" + b"x" * 60)
    data = store.paths(part.id).data
    data.unlink()
    data.symlink_to(outside)
    final = UploadInfo(id=store.new_id(), length=64, filename="m.gguf", created_at=time.time(), concat="final",
                       parts=(part.id,))
    with pytest.raises(StoreError) as caught:
        concat.fill_final(store, concat.create_final(store, final, [part]), [part])
    assert errors.from_store(caught.value).status < 500 and "link" in caught.value.message
    assert not store.paths(final.id).data.exists() or b"secret" not in store.paths(final.id).data.read_bytes()
