"""server/store/filestore.py on tmp dirs: offsets from the file, atomic records, resumable sha256,
checksum rollback, crash reconcile, expiry sweep."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from modeldrop.server import errors
from modeldrop.server.store import digest
from modeldrop.server.store.errors import StoreError
from modeldrop.server.store.filestore import UNSTARTED_GRACE, FileStore, write_atomic
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import State

MIB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    created = FileStore(tmp_path / "staging", durable=True)
    created.prepare()
    return created


def new_upload(store: FileStore, length: int | None = 100, **fields: object) -> UploadInfo:
    return store.create(UploadInfo(id=store.new_id(), length=length, filename="m.gguf", created_at=time.time(),
                                   **fields))  # type: ignore[arg-type]


def record_installed(store: FileStore, upload_id: str, offset: int) -> None:
    """The status the finalizer leaves, through the states it passes."""
    store.write_status(upload_id, State.QUEUED)
    store.write_status(upload_id, State.VERIFYING)
    store.write_status(upload_id, State.INSTALLED, offset=offset)


def write(store: FileStore, info: UploadInfo, *chunks: bytes) -> int:
    writer = store.open_writer(store.load(info.id), MIB)
    try:
        writer.write(list(chunks))
        return writer.sync()
    finally:
        writer.close()


def test_store_offset_is_the_data_file_length(store: FileStore) -> None:
    info = new_upload(store)
    assert store.load(info.id).offset == 0
    with open(store.paths(info.id).data, "ab") as data:
        data.write(b"GGUF123")  # bytes that reached the disk without any record update
    assert store.load(info.id).offset == 7
    assert "offset" not in json.loads(store.paths(info.id).info.read_text())


def test_store_unknown_or_unsafe_ids_are_404(store: FileStore) -> None:
    for upload_id in ("a" * 32, "../" + "a" * 29, "A" * 32, ""):
        with pytest.raises(StoreError) as caught:
            store.load(upload_id)
        assert errors.from_store(caught.value).status == 404


def test_store_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "record"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["record"]


def test_store_writer_appends_in_order(store: FileStore) -> None:
    info = new_upload(store)
    assert write(store, info, b"GGUF", b"abc") == 7
    assert write(store, info, b"def") == 10
    assert store.paths(info.id).data.read_bytes() == b"GGUFabcdef"


@pytest.mark.skipif(not digest.available(), reason="libcrypto not loadable")
def test_store_checkpoint_resume_equals_hashlib(store: FileStore) -> None:
    data = os.urandom(3 * MIB + 123)
    info = new_upload(store, length=len(data))
    write(store, info, data[:MIB + 7])           # one writer (one request), checkpointed at its end
    write(store, info, data[MIB + 7:])
    assert store.digest_if_known(store.load(info.id)) == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not digest.available(), reason="libcrypto not loadable")
def test_store_lost_checkpoint_gives_no_digest(store: FileStore) -> None:
    data = os.urandom(3 * MIB + 123)
    info = new_upload(store, length=len(data))
    write(store, info, data[:MIB + 7])
    write(store, info, data[MIB + 7:2 * MIB])    # a new writer resumes the hash from the checkpoint
    with open(store.paths(info.id).data, "ab") as tail:
        tail.write(data[2 * MIB:2 * MIB + 5])   # bytes past the checkpoint (a crash after write, before sync)
    store.background.submit(int).result()
    store.paths(info.id).checkpoint.unlink()
    restarted = FileStore(store.staging_dir)    # the crash also took the running hash kept in memory
    write(restarted, info, data[2 * MIB + 5:])   # no checkpoint: the digest is left to the finalizer's full read
    assert restarted.digest_if_known(restarted.load(info.id)) is None


@pytest.mark.skipif(not digest.available(), reason="libcrypto not loadable")
def test_store_checkpoint_rehashes_the_tail_past_it(store: FileStore) -> None:
    data = os.urandom(2 * MIB + 99)
    info = new_upload(store, length=len(data))
    write(store, info, data[:MIB])
    with open(store.paths(info.id).data, "ab") as tail:
        tail.write(data[MIB:MIB + 1000])         # durable bytes the checkpoint does not cover yet
    store.background.submit(int).result()
    restarted = FileStore(store.staging_dir)    # a crash: the checkpoint on disk is all there is
    write(restarted, info, data[MIB + 1000:])
    assert restarted.digest_if_known(restarted.load(info.id)) == hashlib.sha256(data).hexdigest()


def test_store_rollback_cuts_the_chunk_and_restores_the_hash(store: FileStore) -> None:
    info = new_upload(store, length=20)
    write(store, info, b"GGUF1234")
    writer = store.open_writer(store.load(info.id), MIB)
    state = writer.hash_state()
    writer.write([b"garbage"])
    writer.rollback(8, state)
    writer.write([b"5678abcd"])
    writer.sync()
    writer.close()
    assert store.paths(info.id).data.read_bytes() == b"GGUF12345678abcd"
    if digest.available():
        write(store, info, b"wxyz")
        assert store.digest_if_known(store.load(info.id)) == hashlib.sha256(b"GGUF12345678abcdwxyz").hexdigest()


@pytest.mark.skipif(not digest.available(), reason="libcrypto not loadable")
def test_store_next_request_resumes_the_running_hash_kept_in_memory(store: FileStore) -> None:
    data = b"GGUF" + os.urandom(3 * MIB)
    info = new_upload(store, length=len(data))
    write(store, info, data[:MIB])
    store.background.submit(int).result()
    store.paths(info.id).checkpoint.unlink()  # only the state kept in memory can resume the hash now
    writer = store.open_writer(store.load(info.id), MIB)
    assert writer.hasher is not None
    writer.close()
    write(store, info, data[MIB:])
    assert store.digest_if_known(store.load(info.id)) == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not digest.available(), reason="libcrypto not loadable")
def test_store_rollback_forgets_a_running_hash_past_the_cut(store: FileStore) -> None:
    # a request synced mid-way (its sync interval), then failed its Upload-Checksum: the hash kept at
    # that sync covers bytes that are gone, and must not be resumed once the file regrows to that length
    first, bad, good = b"GGUF" + os.urandom(MIB), os.urandom(MIB), os.urandom(MIB)
    info = new_upload(store, length=len(first) + len(good) + 10)
    write(store, info, first)
    writer = store.open_writer(store.load(info.id), MIB)
    state = writer.hash_state()
    writer.write([bad])
    writer.sync_interval_step()
    assert store.running_hash(info.id, len(first) + len(bad)) is not None
    writer.rollback(len(first), state)
    writer.close()
    assert store.running_hash(info.id, len(first) + len(bad)) is None
    write(store, info, good)
    write(store, info, b"0123456789")
    assert store.digest_if_known(store.load(info.id)) == hashlib.sha256(first + good + b"0123456789").hexdigest()


@pytest.mark.skipif(not digest.available(), reason="libcrypto not loadable")
def test_store_hashing_alongside_the_write_gives_the_same_digest(store: FileStore) -> None:
    data = os.urandom(5 * MIB + 3)
    info = new_upload(store, length=len(data))
    with concurrent.futures.ThreadPoolExecutor(1) as hash_pool:
        writer = store.open_writer(store.load(info.id), 2 * MIB, hash_pool)
        chunks = [data[start:start + 300_000] for start in range(0, len(data), 300_000)]
        for start in range(0, len(chunks), 4):
            writer.write(chunks[start:start + 4])
            if writer.sync_due():
                writer.sync_interval_step()
                assert store.running_hash(info.id, writer.offset) == writer.hash_state()
                store.background.submit(int).result()  # the checkpoint file follows in the background
                assert store.load_checkpoint(info.id) == (writer.offset, writer.hash_state())
        writer.sync()
        writer.close()
    assert store.paths(info.id).data.read_bytes() == data
    assert store.digest_if_known(store.load(info.id)) == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not digest.available(), reason="libcrypto not loadable")
def test_store_a_failed_write_puts_the_hash_alongside_back(store: FileStore) -> None:
    """The hash runs while pwritev does; if the write fails, the digest must not count the lost bytes."""
    info = new_upload(store, length=20)
    write(store, info, b"GGUF1234")
    with concurrent.futures.ThreadPoolExecutor(1) as hash_pool:
        writer = store.open_writer(store.load(info.id), MIB, hash_pool)
        good_fd, writer.fd = writer.fd, os.open(store.paths(info.id).data, os.O_RDONLY)
        with pytest.raises(OSError):
            writer.write([b"lost", b"bytes"])
        os.close(writer.fd)
        writer.fd = good_fd
        writer.write([b"5678abcdwxyz"])
        writer.sync()
        writer.close()
    assert store.paths(info.id).data.read_bytes() == b"GGUF12345678abcdwxyz"
    assert store.digest_if_known(store.load(info.id)) == hashlib.sha256(b"GGUF12345678abcdwxyz").hexdigest()


def test_store_reconcile_rolls_back_a_pending_checksum_request(store: FileStore) -> None:
    info = new_upload(store)
    write(store, info, b"GGUF1234", b"unverified")
    store.paths(info.id).pending.write_text("8")  # the server died before the checksum was checked
    report = store.reconcile()
    assert report.rolled_back == [info.id]
    assert store.load(info.id).offset == 8
    assert not store.paths(info.id).pending.exists()
    assert info.id in report.unfinished


def test_store_reconcile_removes_old_orphans_only(store: FileStore) -> None:
    info = new_upload(store)
    orphan = store.uploads_dir / ("b" * 32 + ".bin")
    temp = store.uploads_dir / f"{info.id}.info.tmp-1234"
    fresh = store.uploads_dir / ("c" * 32 + ".bin")
    for path in (orphan, temp, fresh):
        path.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    os.utime(temp, (old, old))
    report = store.reconcile(orphan_age=60)
    assert sorted(report.removed_orphans) == sorted([orphan.name, temp.name])
    assert fresh.exists() and store.paths(info.id).data.exists()


def test_store_reconcile_sorts_complete_and_final_uploads(store: FileStore) -> None:
    done = new_upload(store, length=4)
    write(store, done, b"GGUF")
    final = new_upload(store, length=4, concat="final")
    report = store.reconcile()
    assert report.to_finalize == [done.id]
    assert report.to_assemble == [final.id]


def test_store_sweep_expires_idle_unfinished_uploads_as_gone(store: FileStore) -> None:
    idle = new_upload(store)
    now = time.time()
    assert store.sweep(3600, now=now) == []
    assert store.sweep(3600, now=now + 3601) == [idle.id]
    with pytest.raises(StoreError) as caught:
        store.load(idle.id)
    assert errors.from_store(caught.value).status == 410
    assert not store.paths(idle.id).data.exists()


def test_store_sweep_keeps_finished_records_until_they_expire(store: FileStore) -> None:
    info = new_upload(store, length=4)
    write(store, info, b"GGUF")
    record_installed(store, info.id, 4)
    store.remove_data(info.id)
    now = time.time()
    assert store.sweep(60, now=now + 30) == []
    assert store.load(info.id).offset == 4
    assert store.sweep(60, now=now + 61) == [info.id]
    assert not store.paths(info.id).gone.exists() or store.sweep(60, now=now + 1000) == []
    store.sweep(60, now=now + 1000)
    with pytest.raises(StoreError) as caught:
        store.load(info.id)
    assert errors.from_store(caught.value).status == 404  # the tombstone itself is dropped after 4 × expire_after


def test_store_load_of_a_moved_complete_upload_uses_the_status_offset(store: FileStore) -> None:
    info = new_upload(store, length=4)
    write(store, info, b"GGUF")
    store.mark_queued(store.load(info.id))
    store.paths(info.id).data.unlink()  # staged into a split set by the finalizer, state still verifying
    assert store.load(info.id).offset == 4


def test_store_admission_figures_count_partials_until_a_final_takes_them(store: FileStore) -> None:
    new_upload(store)
    new_upload(store, concat="partial")
    done_partial = new_upload(store, length=4, concat="partial")
    write(store, done_partial, b"GGUF")
    taken = new_upload(store, length=4, concat="partial")
    write(store, taken, b"GGUF")
    store.claim_parts(store.new_id(), [store.load(taken.id)])
    failed = new_upload(store)
    store.write_status(failed.id, State.FAILED, reason="not gguf")
    complete = new_upload(store, length=4)
    write(store, complete, b"GGUF")
    unfinished, reserved = store.admission_figures()
    assert unfinished == 3  # the unfinished upload and the two partials no final has taken
    assert reserved == 200  # the unfinished upload and the unfinished partial; not the failed one


def test_store_admission_figures_release_an_upload_that_never_started(store: FileStore) -> None:
    started = new_upload(store, length=100)
    write(store, started, b"GGUF")
    new_upload(store, length=100)  # its client never sent a byte (it likely lost the creation response)
    assert store.admission_figures()[1] == 96 + 100
    later = time.time() + UNSTARTED_GRACE + 1
    assert store.admission_figures(now=later) == (2, 96)  # still counted as unfinished, no longer reserving


def test_store_admission_ignores_retained_records_of_installed_uploads(store: FileStore) -> None:
    installed = new_upload(store, length=4)
    write(store, installed, b"GGUF")
    record_installed(store, installed.id, 4)
    store.remove_data(installed.id)
    assert store.open_uploads() == []
    assert store.list_ids() == [installed.id]  # the record stays, so HEAD still answers


# -- links planted in staging: nothing is read, written or truncated through them ----------------------


def plant_link(path: Path, target: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def test_store_data_file_planted_as_link_is_refused_and_the_target_untouched(store: FileStore,
                                                                               tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    info = new_upload(store)
    plant_link(store.paths(info.id).data, outside)
    with pytest.raises(StoreError) as caught:
        store.open_writer(store.load(info.id), MIB)
    assert errors.from_store(caught.value).status in (403, 500) and "link" in caught.value.message
    with pytest.raises(StoreError):
        store.open_writer(info, MIB)  # even from a record loaded before the link was planted
    assert outside.read_bytes() == b"precious"


def test_store_reconcile_does_not_truncate_through_a_planted_link(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    info = new_upload(store)
    store.paths(info.id).pending.write_text("0")  # a checksum PATCH died: reconcile cuts the data back to 0
    plant_link(store.paths(info.id).data, outside)
    store.reconcile()
    assert outside.read_bytes() == b"precious"


def test_store_records_planted_as_links_are_not_read_through(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"state": "installed", "offset": 5}))
    info = new_upload(store)
    plant_link(store.paths(info.id).status, outside)
    assert store.read_status(info.id) is None
    store.write_status(info.id, State.QUEUED)
    assert json.loads(outside.read_text()) == {"state": "installed", "offset": 5}
    assert not store.paths(info.id).status.is_symlink()


def test_store_uploads_folder_planted_as_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "staging" / "uploads").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="link"):
        FileStore(tmp_path / "staging").prepare()


def test_store_sweep_expires_complete_partials_no_final_used(store: FileStore) -> None:
    unused = new_upload(store, length=4, concat="partial")
    write(store, unused, b"GGUF")
    now = time.time()
    assert store.sweep(3600, now=now + 60) == []
    assert store.sweep(3600, now=now + 3601) == [unused.id]
    with pytest.raises(StoreError) as caught:
        store.load(unused.id)
    assert errors.from_store(caught.value).status == 410 and "no final upload used it" in caught.value.message
    assert not store.paths(unused.id).data.exists()


def test_store_sweep_keeps_partials_being_assembled_and_frees_those_already_used(store: FileStore) -> None:
    parts = []
    for _ in range(2):
        parts.append(new_upload(store, length=4, concat="partial"))
        write(store, parts[-1], b"GGUF")
    assembling = new_upload(store, length=4, concat="final", parts=(parts[0].id,))
    store.claim_parts(assembling.id, [store.load(parts[0].id)])
    assembled = new_upload(store, length=4, concat="final", parts=(parts[1].id,))
    store.claim_parts(assembled.id, [store.load(parts[1].id)])
    store.paths(assembled.id).data.write_bytes(b"GGUF")
    store.mark_queued(store.load(assembled.id))  # a crash came before the partial was freed
    later = time.time() + 2 * 3600
    os.utime(store.paths(assembling.id).data, (later, later))  # its copy is still writing
    assert store.sweep(3600, now=later) == [parts[1].id]
    assert store.load(parts[0].id).consumed_by == assembling.id
    with pytest.raises(StoreError) as caught:
        store.load(parts[1].id)
    assert errors.from_store(caught.value).status == 410 and assembled.id in caught.value.message


def test_store_a_partial_belongs_to_one_final(store: FileStore) -> None:
    part = new_upload(store, length=4, concat="partial")
    write(store, part, b"GGUF")
    first = new_upload(store, length=4, concat="final", parts=(part.id,))
    store.claim_parts(first.id, [store.load(part.id)])
    with pytest.raises(StoreError) as caught:
        store.claim_parts(store.new_id(), [store.load(part.id)])
    assert errors.from_store(caught.value).status == 409 and first.id in caught.value.message
    assert store.assembling_into(store.load(part.id)) == first.id
    store.release_parts(first.id, [part.id])
    assert store.load(part.id).consumed_by is None
    never_created = store.new_id()  # a claim whose final never came to be holds nothing
    store.claim_parts(never_created, [store.load(part.id)])
    store.claim_parts(store.new_id(), [store.load(part.id)])


def test_store_failed_upload_keeps_its_record_and_reason_not_its_bytes(store: FileStore) -> None:
    info = new_upload(store, length=100)
    write(store, info, b"GGUF", b"x" * 10)
    store.mark_failed(store.load(info.id), "the GGUF header is truncated")
    assert not store.paths(info.id).data.exists()
    assert store.load(info.id).offset == 14
    assert store.read_status(info.id).reason == "the GGUF header is truncated"  # type: ignore[union-attr]
    assert store.open_uploads() == []
    with pytest.raises(StoreError) as caught:
        store.open_writer(store.load(info.id), MIB)
    assert errors.from_store(caught.value).status == 410 and "truncated" in caught.value.message
    cut_short = new_upload(store, length=100)  # a crash between the failed status and the unlink
    write(store, cut_short, b"GGUF")
    store.write_status(cut_short.id, State.FAILED, reason="bad header", offset=4)
    store.sweep(3600)
    assert not store.paths(cut_short.id).data.exists() and store.load(cut_short.id).offset == 4
