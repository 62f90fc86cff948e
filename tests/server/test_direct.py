"""server/store/direct.py: bodies written with O_DIRECT and hashed from memory, in process and through a server."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modeldrop.server import threads
from modeldrop.server.store import direct
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.info import UploadInfo
from tests.support.metrics import server_metric
from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import PATCH_TYPE, RawRequest, TusClient, gguf_bytes, on, stored_size

MIB = 1024 * 1024


def new_writer(store: FileStore, length: int):  # type: ignore[no-untyped-def]
    info = store.create(UploadInfo(id=store.new_id(), length=length, filename="m.gguf"))
    return store.open_writer(info, sync_interval=64 * MIB)


def append_in_pieces(appender: direct.DirectAppender, data: bytes, sizes: Iterator[int]) -> None:
    position = 0
    while position < len(data):
        space = appender.space(len(data) - position)
        count = min(len(space), next(sizes))
        space[:count] = data[position:position + count]
        space.release()
        appender.commit(count)
        position += count


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "staging")
    store.prepare()
    return store


@pytest.mark.parametrize("head", [0, 5, 4096, 4097])
def test_pieces_of_any_size_after_any_offset_land_in_order_and_hash_like_hashlib(store: FileStore, head: int) -> None:
    data = random.Random(head).randbytes(9 * MIB + 123)
    writer = new_writer(store, len(data))
    if head:
        writer.write([data[:head]])  # a resumed upload: the file ends anywhere
    appender = direct.open_direct(writer)
    assert appender is not None, "ext4 takes O_DIRECT"
    try:
        sizes = iter(random.Random(1).choice([1, 511, 4096, 65536, 3 * MIB, 2 * MIB]) for _ in range(10**6))
        append_in_pieces(appender, data[head:], sizes)
        assert appender.drain() == len(data)
    finally:
        appender.close()
    assert writer.sync() == len(data)
    writer.close()
    assert store.paths(writer.info.id).data.read_bytes() == data
    assert writer.hasher is not None and writer.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    checkpoint = store.load_checkpoint(writer.info.id)
    assert checkpoint is not None and checkpoint[0] == len(data)


def test_a_file_system_not_known_for_o_direct_splices_instead(tmp_path: Path, mount) -> None:  # type: ignore[no-untyped-def]
    """tmpfs takes O_DIRECT on new kernels, but only the local disk file systems listed get it."""
    (tmp_path / "tmpfs").mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", target=tmp_path / "tmpfs")
    store = FileStore(tmp_path / "tmpfs" / "staging")
    store.prepare()
    writer = new_writer(store, 10)
    try:
        assert direct.open_direct(writer) is None
    finally:
        writer.close()


def test_beyond_max_requests_bodies_fall_back_so_memory_stays_bounded(store: FileStore) -> None:
    writers = [new_writer(store, 10) for _ in range(direct.MAX_REQUESTS + 1)]
    appenders = [direct.open_direct(writer) for writer in writers]
    try:
        assert all(appenders[:-1]) and appenders[-1] is None
    finally:
        for appender in appenders:
            if appender is not None:
                appender.drain()
                appender.close()
    again = direct.open_direct(writers[-1])  # a slot is free again
    assert again is not None
    again.close()
    for writer in writers:
        writer.close()


def test_the_next_body_reuses_the_buffers_and_no_more_are_kept(store: FileStore) -> None:
    """Fresh buffers are faulted in page by page; a client sending 64 MiB PATCHes would pay that per request."""
    data = random.Random(7).randbytes(5 * MIB)
    seen: list[set[int]] = []
    for _ in range(3):
        writer = new_writer(store, len(data))
        appender = direct.open_direct(writer)
        assert appender is not None
        seen.append({id(buffer) for buffer in appender._buffers})
        try:
            append_in_pieces(appender, data, iter(lambda: 3 * MIB, None))
            assert appender.drain() == len(data)
        finally:
            appender.close()
        writer.sync()
        writer.close()
        assert store.paths(writer.info.id).data.read_bytes() == data
        assert len(direct._spare_buffers) == direct.MAX_REQUESTS * direct.BUFFERS
    assert seen[0] == seen[1] == seen[2]


def test_the_appenders_threads_yield_the_cpu_to_the_event_loop(store: FileStore) -> None:
    """Up to MAX_REQUESTS bodies bring three busy threads each: at the loop's priority they held HEADs up."""
    writer = new_writer(store, 10)
    appender = direct.open_direct(writer)
    assert appender is not None
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, thread.native_id or 0) for thread in appender._threads] == \
            [min(19, own + threads.BODY_NICE)] * 2
        assert os.getpriority(os.PRIO_PROCESS, 0) == own, "only the body's threads, not the caller's"
    finally:
        appender.drain()
        appender.close()
        writer.close()


def test_a_full_disk_leaves_the_offset_at_the_bytes_in_the_file(tmp_path: Path, mount) -> None:  # type: ignore[no-untyped-def]
    """On a real 16 MiB ext4 file system: writes fail with ENOSPC part-way; what reached the file is counted."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(16 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    (tmp_path / "disk").mkdir()
    mount("-o", "loop", str(image), target=tmp_path / "disk")
    store = FileStore(tmp_path / "disk" / "staging")
    store.prepare()
    data = random.Random(7).randbytes(32 * MIB)
    writer = new_writer(store, len(data))
    writer.write([data[:100]])
    appender = direct.open_direct(writer)
    assert appender is not None
    try:
        with pytest.raises(OSError) as failure:
            append_in_pieces(appender, data[100:], iter(lambda: 2 * MIB, None))
            appender.drain()
        assert failure.value.errno == 28  # ENOSPC
    finally:
        appender.close()
    stored = os.path.getsize(store.paths(writer.info.id).data)
    assert 100 < stored < len(data) and writer.offset == stored
    assert writer.hasher is None, "a hasher that may have seen bytes the file lacks is given up"
    assert writer.keep_what_arrived() == stored
    writer.close()
    assert store.paths(writer.info.id).data.read_bytes() == data[:stored]


@pytest.mark.parametrize("direct_io", [True, False])
def test_the_server_writes_large_bodies_with_o_direct_unless_told_not_to(
        start_server: Callable[..., ServerProcess], direct_io: bool) -> None:
    model = gguf_bytes(tensors=4, tensor_elems=1024 * 1024)  # ~16 MiB
    server = start_server(direct_io=direct_io)
    client = TusClient(server.url)
    location = client.location(len(model))
    assert client.patch(location, model[:4097], 0).status_code == 204  # small: through ASGI, file misaligned
    assert client.patch(location, model[4097:], 4097).status_code == 204
    assert server_metric(server.url, "modeldrop_bytes_spliced_total") == len(model) - 4097
    assert server_metric(server.url, "modeldrop_bytes_direct_total") == (len(model) - 4097 if direct_io else 0)
    status = client.wait_state(location, "installed")
    assert status["sha256"] == hashlib.sha256(model).hexdigest()
    assert (server.models_dir / status["final_name"]).read_bytes() == model


def test_a_body_that_starts_while_many_are_received_splices_though_a_slot_is_free(
        start_server: Callable[..., ServerProcess]) -> None:
    """Past direct.BUSY_BODIES bodies at once, O_DIRECT's threads held HEADs up more than its speed was worth."""
    server = start_server()
    client = TusClient(server.url)
    model = gguf_bytes(tensors=2, tensor_elems=512 * 1024)  # ~4 MiB: taken off the socket
    head = 3 * MIB  # an O_DIRECT body stores nothing until a 2 MiB buffer is full

    def start_body() -> tuple[str, RawRequest]:
        location = client.location(len(model))
        raw = RawRequest(on(server, location), "PATCH",
                         client.headers({"Content-Type": PATCH_TYPE, "Upload-Offset": "0"}), len(model))
        raw.send(model[:head])
        wait_for(lambda: stored_size(server, location) >= 2 * MIB, 10, "the body's first bytes")
        return location, raw

    def finish(bodies: list[tuple[str, RawRequest]]) -> None:
        for _, raw in bodies:
            raw.send(model[head:])
            assert raw.response_status(timeout=30) == 204

    holding_slots = [start_body() for _ in range(direct.MAX_REQUESTS)]
    busy = [start_body() for _ in range(direct.BUSY_BODIES)]  # no slot free when they started: spliced
    finish(holding_slots)
    direct_bytes = server_metric(server.url, "modeldrop_bytes_direct_total")
    assert direct_bytes == direct.MAX_REQUESTS * len(model)
    late = client.location(len(model))  # every slot free now, but 16 bodies are still being received
    assert client.patch(late, model, 0).status_code == 204
    assert server_metric(server.url, "modeldrop_bytes_direct_total") == direct_bytes
    finish(busy)
    again = client.location(len(model))
    assert client.patch(again, model, 0).status_code == 204
    assert server_metric(server.url, "modeldrop_bytes_direct_total") == direct_bytes + len(model)

