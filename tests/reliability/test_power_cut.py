"""Power cuts: what an acknowledged offset or an installed model is worth when the page cache is lost.

`kill -9` keeps the page cache, so test_server_kills cannot tell whether a promised offset was on disk.
Here staging and models live on tests/support/powercut.py, a FUSE pass-through filesystem that drops
every file's data written since its last fsync/fdatasync and every directory change since that
directory's last fsync when the power is cut (LazyFS's model). The first tests show the tool can fail
(what was not synced is lost, what was is kept); the scenario cuts the power under a real server and
real clients again and again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modeldrop.server.store.filestore import fsync_directory
from tests.support.clients import RETRY_THROUGH_RESTARTS, NodeUpload, Trace, tuspy_slow_upload
from tests.support.figures import Figures
from tests.support.models import ModelsWatcher, make_models, sha256_of
from tests.support.powercut import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    PowerCut,
    fuse_available,
    renameat2,
)
from tests.support.processes import RedisProcess, ServerProcess, WorkerProcess
from tests.support.tus import RawPatch, TusClient, upload_id

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=f"no FUSE: {fuse_available()}")


@pytest.fixture
def powercut(tmp_path: Path) -> Iterator[PowerCut]:
    mount = PowerCut(tmp_path / "backing", tmp_path / "mnt", tmp_path / "powercut.log").start()
    try:
        yield mount
    finally:
        mount.shutdown()


def write_file(path: Path, data: bytes, sync: str | None = "fsync") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        if sync == "fsync":
            os.fsync(fd)
        elif sync == "fdatasync":
            os.fdatasync(fd)
    finally:
        os.close(fd)


# -- the tool itself: it must be able to lose things ---------------------------------------------------


def test_tool_unsynced_append_is_lost_synced_data_kept(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    write_file(mnt / "a", b"synced-", sync="fdatasync")
    fsync_directory(mnt)
    write_file(mnt / "a", b"not synced", sync=None)
    assert (powercut.root / "a").read_bytes() == b"synced-not synced", "writes must go through at once"
    report = powercut.cut()
    assert (mnt / "a").read_bytes() == b"synced-"
    assert report["fdatasyncs"] == 1 and report["fsyncdirs"] == 1 and report["reverted_files"] == 1


def test_tool_overwrite_and_truncate_of_synced_bytes_are_undone(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    write_file(mnt / "a", b"0123456789")
    fsync_directory(mnt)
    fd = os.open(mnt / "a", os.O_RDWR)
    os.pwrite(fd, b"abc", 2)
    os.ftruncate(fd, 4)
    os.pwrite(fd, b"XYZWV", 3)
    os.close(fd)
    with open(mnt / "a", "r+b") as opened:  # O_TRUNC through open
        opened.write(b"new")
    powercut.cut()
    assert (mnt / "a").read_bytes() == b"0123456789"


def test_tool_create_without_directory_fsync_is_lost_even_when_the_file_was_synced(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    write_file(mnt / "lost", b"data", sync="fsync")
    write_file(mnt / "kept", b"data", sync="fsync")
    write_file(mnt / "empty", b"data", sync=None)
    fsync_directory(mnt)
    os.unlink(mnt / "lost")  # ...and a later unlink, itself not synced, is undone
    write_file(mnt / "lost2", b"data", sync="fsync")
    powercut.cut()
    assert sorted(os.listdir(mnt)) == ["empty", "kept", "lost"]
    assert (mnt / "kept").read_bytes() == b"data" and (mnt / "lost").read_bytes() == b"data"
    assert (mnt / "empty").read_bytes() == b"", "its name was synced, its data never"


def test_tool_rename_is_durable_only_once_its_directories_are_synced(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    (mnt / "staging").mkdir()
    (mnt / "models").mkdir()
    fsync_directory(mnt)
    write_file(mnt / "staging" / "one.bin", b"1")
    write_file(mnt / "staging" / "two.bin", b"2")
    write_file(mnt / "models" / "old.gguf", b"old")
    fsync_directory(mnt / "staging")
    fsync_directory(mnt / "models")
    renameat2(str(mnt / "staging" / "one.bin"), str(mnt / "models" / "one.gguf"), RENAME_NOREPLACE)
    os.replace(mnt / "staging" / "two.bin", mnt / "models" / "old.gguf")  # replaces: old.gguf must come back
    powercut.cut()
    assert sorted(os.listdir(mnt / "models")) == ["old.gguf"]
    assert (mnt / "models" / "old.gguf").read_bytes() == b"old"
    assert sorted(os.listdir(mnt / "staging")) == ["one.bin", "two.bin"]

    renameat2(str(mnt / "staging" / "one.bin"), str(mnt / "models" / "one.gguf"), RENAME_NOREPLACE)
    fsync_directory(mnt / "models")
    fsync_directory(mnt / "staging")
    powercut.cut()
    assert sorted(os.listdir(mnt / "models")) == ["old.gguf", "one.gguf"]
    assert sorted(os.listdir(mnt / "staging")) == ["two.bin"]


def test_tool_directory_moves_and_exchanges_are_undone(powercut: PowerCut) -> None:
    mnt = powercut.mountpoint
    (mnt / "models").mkdir()
    (mnt / "models" / "set").mkdir()
    write_file(mnt / "models" / "set" / "old-1.gguf", b"old")
    fsync_directory(mnt / "models" / "set")
    fsync_directory(mnt / "models")
    fsync_directory(mnt)
    (mnt / "new-set").mkdir()
    write_file(mnt / "new-set" / "new-1.gguf", b"new")
    fsync_directory(mnt / "new-set")
    fsync_directory(mnt)
    renameat2(str(mnt / "new-set"), str(mnt / "models" / "set"), RENAME_EXCHANGE)
    assert os.listdir(mnt / "models" / "set") == ["new-1.gguf"]
    powercut.cut()
    assert os.listdir(mnt / "models" / "set") == ["old-1.gguf"]
    assert os.listdir(mnt / "new-set") == ["new-1.gguf"]
    (mnt / "fresh").mkdir()
    os.rename(mnt / "new-set", mnt / "models" / "moved")
    fsync_directory(mnt / "models")  # models/ is durable with "moved", but the root never lost "new-set"
    powercut.cut()
    assert sorted(os.listdir(mnt)) == ["models", "new-set"]
    assert os.listdir(mnt / "new-set") == ["new-1.gguf"]


# -- the scenario: a real server and real clients, the power cut again and again -----------------------


@dataclasses.dataclass
class ClientUpload:
    """One upload by one real client, with every Upload-Offset the server told it."""

    source: Path
    node: NodeUpload | None = None
    trace: Trace | None = None
    finished: bool = False

    def url(self) -> str | None:
        if self.node is not None:
            urls = self.node.of("url")
            return str(urls[-1]["url"]) if urls else None
        assert self.trace is not None
        return self.trace.url

    def told(self) -> list[int]:
        """Every offset a 2xx answer carried (PATCH 204 and HEAD 200), in order."""
        if self.node is not None:
            return [int(event["offset"]) for event in self.node.of("response")
                    if event["offset"] is not None and 200 <= event["status"] < 300]
        assert self.trace is not None
        return [offset for _, offset in list(self.trace.events)]

    def succeeded(self) -> bool:
        if self.node is not None:
            return bool(self.node.of("success"))
        assert self.trace is not None
        return self.trace.done


class PowerCutRun:
    """Clients uploading through a server on the FUSE mount; cuts; the checks after each cut."""

    def __init__(self, mount: PowerCut, tmp_path: Path, record: Figures, sources: list[Path],
                 with_redis: bool = False) -> None:
        self.mount = mount
        self.record = record
        self.sources = {path.name: (path, sha256_of(path)) for path in sources}
        data = mount.mountpoint / "data"
        data.mkdir()
        fsync_directory(mount.mountpoint)
        # with Redis: its data dir is off the mount, without persistence, so a cut also loses the queue
        self.redis = RedisProcess(tmp_path / "redis") if with_redis else None
        self.worker = WorkerProcess(data, self.redis.url, tmp_path / "worker.log") if self.redis else None
        self.server = ServerProcess(data, tmp_path / "server.log", sync_interval="1MiB", idle_timeout=5,
                                    lock_timeout=3, stale_after=5, maintenance_interval=2,
                                    redis_url=self.redis.url if self.redis else None)
        self.queue = list(sources)
        self.uploads: list[ClientUpload] = []
        self.installed_reported: dict[str, str] = {}  # upload id -> model name, once GET said installed
        self.problems: list[str] = []
        self.offsets_checked = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.deadline = time.monotonic() + 600

    # paths as they are on the backing directory (the mount's durable state right after a cut)
    @property
    def staging(self) -> Path:
        return self.mount.root / "data" / "staging" / "uploads"

    @property
    def models(self) -> Path:
        return self.mount.root / "data" / "models"

    def next_source(self) -> Path | None:
        with self.lock:
            return self.queue.pop(0) if self.queue and not self.stop.is_set() else None

    def node_slot(self, chunk_size: int) -> None:
        endpoint = f"{self.server.url}/files/"
        while (source := self.next_source()) is not None:
            upload = ClientUpload(source, node=NodeUpload(source, endpoint, chunk_size=chunk_size, delay_ms=150,
                                                          retry_delays=RETRY_THROUGH_RESTARTS))
            self.uploads.append(upload)
            assert upload.node is not None
            with contextlib.suppress(AssertionError):
                upload.node.wait(max(5.0, self.deadline - time.monotonic()))
            upload.finished = True

    def tuspy_slot(self, chunk_size: int) -> None:
        endpoint = f"{self.server.url}/files/"
        while (source := self.next_source()) is not None:
            upload = ClientUpload(source, trace=Trace(source.name))
            self.uploads.append(upload)
            assert upload.trace is not None
            tuspy_slow_upload(endpoint, source, upload.trace, chunk_size=chunk_size, delay=0.1, deadline=self.deadline)
            upload.finished = True

    def trickle_slot(self, chunk_size: int) -> None:
        while (source := self.next_source()) is not None:
            upload = ClientUpload(source, trace=Trace(source.name))
            self.uploads.append(upload)
            assert upload.trace is not None
            trickle_upload(self.server.url, source, upload.trace, chunk_size=chunk_size, deadline=self.deadline)
            upload.finished = True

    def poll_statuses(self) -> None:
        """Records every upload the server ever reported installed."""
        while not self.stop.is_set():
            for upload in list(self.uploads):
                url = upload.url()
                if url is None or upload_id(url) in self.installed_reported:
                    continue
                status = TusClient(self.server.url).try_status(url)
                if status is not None and status["state"] == "installed":
                    self.installed_reported[upload_id(url)] = upload.source.name
            time.sleep(0.2)

    # -- checks on the state a cut left ---------------------------------------------------------------

    def check(self, when: str) -> None:
        for upload in list(self.uploads):
            url = upload.url()
            told = upload.told()
            if url is None:
                continue
            self.check_offsets(upload, upload_id(url), max(told, default=0), when)
        for uid, name in list(self.installed_reported.items()):
            _, digest = self.sources[name]
            target = self.models / name
            if not target.exists() or sha256_of(target) != digest:
                self.problems.append(f"{when}: {name} (upload {uid}) was reported installed but is "
                                     f"{'missing' if not target.exists() else 'not the source'} in models/")
                self.record.lost += 1
        for directory, _, names in os.walk(self.models):
            for name in names:
                path = Path(directory) / name
                expected = self.sources.get(name)
                if expected is None or path.stat().st_size != expected[0].stat().st_size or \
                        sha256_of(path) != expected[1]:
                    self.problems.append(f"{when}: models/ holds {path.relative_to(self.models)}, "
                                         f"{path.stat().st_size} bytes, not a complete verified model")
                    self.record.corrupt += 1

    def check_offsets(self, upload: ClientUpload, uid: str, promised: int, when: str) -> None:
        source, _ = self.sources[upload.source.name]
        data = self.staging / f"{uid}.bin"
        if not data.exists():
            installed = self.models / upload.source.name
            if installed.exists():
                return  # checked as a model (if it was reported installed) and by the models/ scan
            status = _read_json(self.staging / f"{uid}.status")
            if status.get("state") == "failed" and status.get("reason"):
                return
            self.problems.append(f"{when}: upload {uid} ({upload.source.name}) was told offset {promised}, "
                                 f"its data file is gone and it is neither installed nor failed")
            self.record.lost += 1
            return
        self.offsets_checked += 1
        have = data.read_bytes()
        if len(have) < promised:
            self.problems.append(f"{when}: upload {uid} ({upload.source.name}) was told offset {promised}, "
                                 f"the data file has {len(have)} bytes")
            self.record.lost += 1
        elif have[:promised] != source.read_bytes()[:promised]:
            self.problems.append(f"{when}: upload {uid} ({upload.source.name}): the first {promised} bytes "
                                 f"differ from the source")
            self.record.corrupt += 1
        if not (self.staging / f"{uid}.info").exists():
            self.problems.append(f"{when}: upload {uid} ({upload.source.name}) has data but no info record")
            self.record.lost += 1

    def start_processes(self) -> None:
        if self.redis is not None and self.worker is not None:
            self.redis.start()
            self.worker.start()
        self.server.start()

    def kill_processes(self) -> None:
        """SIGKILL of every process using the mount (and of Redis, whose unsaved queue the cut loses)."""
        self.server.kill()
        if self.redis is not None and self.worker is not None:
            self.worker.kill()
            self.redis.kill()

    def stop_processes(self) -> None:
        self.server.stop(timeout=5)
        if self.redis is not None and self.worker is not None:
            self.worker.stop(timeout=5)
            self.redis.stop(timeout=5)

    # -- the run --------------------------------------------------------------------------------------

    def run(self, cuts: int, seed: int) -> None:
        rng = random.Random(seed)
        self.start_processes()
        # what a reader of models/ sees while it all runs (through the mount, so also right after each remount)
        self.watcher = ModelsWatcher(self.mount.mountpoint / "data" / "models", interval=0.02).__enter__()
        threads = [threading.Thread(target=self.node_slot, args=(1024 * 1024,), daemon=True),  # spliced bodies
                   threading.Thread(target=self.node_slot, args=(384 * 1024,), daemon=True),
                   threading.Thread(target=self.tuspy_slot, args=(256 * 1024,), daemon=True),
                   threading.Thread(target=self.tuspy_slot, args=(128 * 1024,), daemon=True),
                   # bodies of 2 MiB sent slowly, so that most cuts land mid-body, with unsynced bytes written
                   threading.Thread(target=self.trickle_slot, args=(2 * 1024 * 1024,), daemon=True)]
        poller = threading.Thread(target=self.poll_statuses, daemon=True)
        for thread in [*threads, poller]:
            thread.start()
        try:
            while self.record.faults < cuts and any(thread.is_alive() for thread in threads):
                time.sleep(rng.uniform(0.3, 2.5))
                self.kill_processes()
                report = self.mount.cut()
                self.record.faults += 1
                self.reverted = getattr(self, "reverted", 0) + report["reverted_bytes"]
                self.check(f"after cut {self.record.faults}")
                self.start_processes()
            self.stop.set()  # no new uploads; the ones running finish
            for thread in threads:
                thread.join(max(1.0, self.deadline - time.monotonic()))
        finally:
            self.watcher.__exit__(None, None, None)
            self.stop.set()
            for upload in self.uploads:
                if upload.node is not None:
                    upload.node.stop()
        poller.join(5)

    def finish(self) -> None:
        """Every upload ends installed with the source's bytes: every source is a good model, so one that ends
        failed lost something a cut should not have taken (a failure without a reason would be worse still)."""
        for upload in self.uploads:
            url = upload.url()
            if url is None:
                self.problems.append(f"{upload.source.name}: the client never got an upload URL")
                self.record.lost += 1
                continue
            if not upload.succeeded():
                self.problems.append(f"{upload.source.name}: the client did not finish ({url})")
                self.record.lost += 1
                continue
            status = TusClient(self.server.url).wait_state(url, "installed", "failed", timeout=60, interval=0.2,
                                                           through_restarts=True)
            if status["state"] == "installed":
                self.installed_reported[upload_id(url)] = upload.source.name
                self.record.completed += 1
            else:
                self.problems.append(f"{upload.source.name}: a good model ended failed: "
                                     f"{status.get('reason') or 'without a reason'}")
                self.record.lost += 1
            if upload.trace is not None:  # every resume found at least the offset last promised
                self.problems += upload.trace.check_resumes()
        self.check("at the end")
        found = self.watcher.problems([source for source, _ in self.sources.values()])
        self.record.corrupt += len(found)
        self.problems += found


def trickle_upload(url: str, source: Path, trace: Trace, *, chunk_size: int, deadline: float,
                   piece: int = 64 * 1024, pause: float = 0.015) -> None:
    """A tus client that sends each PATCH body slowly (a piece every `pause` seconds, by hand on the socket), so
    that most cuts land mid-body; HEAD after any error.

    Records, like tuspy_slow_upload, every offset a 204 or a HEAD told it.
    """
    client = TusClient(url, timeout=15)
    data = source.read_bytes()
    while time.monotonic() < deadline:
        raw: RawPatch | None = None
        try:
            if trace.url is None:
                created = client.create(len(data), metadata={"filename": source.name})
                if created.status_code != 201:
                    raise OSError(f"POST answered {created.status_code}")
                trace.url = created.headers["Location"]
            offset = client.try_offset(trace.url)
            if offset is None:
                raise OSError("HEAD did not answer 200")
            trace.events.append(("resumed", offset))
            if offset >= len(data):
                trace.done = True
                return
            body = data[offset:offset + chunk_size]
            raw = RawPatch(trace.url, offset, len(body))
            raw.send_slowly(body, rate=piece / pause, piece=piece)
            answer = raw.response(timeout=15)
            if answer is None or answer[0] != 204:
                raise OSError(f"PATCH answered {answer[0] if answer else 'nothing'}")
            trace.events.append(("accepted", int(answer[1].get("upload-offset") or 0)))
        except (OSError, httpx.HTTPError) as exc:
            trace.error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3 + random.random() * 0.3)
        finally:
            if raw is not None:
                raw.close()
    trace.error = f"did not finish in time (last error: {trace.error})"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return {}


def run_power_cuts(tmp_path: Path, figures: Callable[..., Figures], name: str, *, cuts: int, count: int,
                   mib: float, seed: int, with_redis: bool = False) -> None:
    record = figures(name, fault_kind="cuts")
    sources = make_models(tmp_path / "sources", count // 2, mib, "cut") + \
        make_models(tmp_path / "sources", count - count // 2, mib * 0.6, "short")
    mount = PowerCut(tmp_path / "backing", tmp_path / "mnt", tmp_path / "powercut.log").start()
    run = PowerCutRun(mount, tmp_path, record, sources, with_redis)
    try:
        run.run(cuts, seed)
        run.finish()
    finally:
        run.stop_processes()
        mount.shutdown()
    told = sum(len(upload.told()) for upload in run.uploads)
    syncs = {key: sum(report[key] for report in mount.reports) for key in ("fdatasyncs", "fsyncs", "fsyncdirs")}
    record.notes.append(f"{len(run.uploads)} uploads (tus-js-client, tuspy, a slow raw client), {told} offsets told, "
                        f"{run.offsets_checked} offset checks on disk after cuts, {len(run.installed_reported)} "
                        f"reported installed, {getattr(run, 'reverted', 0)} unsynced bytes dropped by cuts, "
                        f"syncs seen {syncs}")
    assert record.faults >= cuts, f"only {record.faults} cuts: the uploads ended first"
    assert not run.problems, "\n".join(run.problems[:30]) + f"\nserver log:\n{run.server.log()[-4000:]}"


def test_power_cut_20_times_while_4_clients_upload(tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_power_cuts(tmp_path, figures, "power cut (FUSE, unsynced state dropped)", cuts=20, count=44, mib=6, seed=7)


def test_power_cut_20_times_with_rq_worker_and_redis(tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_power_cuts(tmp_path, figures, "power cut with RQ worker, Redis losing its queue at each cut", cuts=20,
                   count=44, mib=6, seed=8, with_redis=True)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak_power_cut_60_times(tmp_path: Path, figures: Callable[..., Figures]) -> None:
    run_power_cuts(tmp_path, figures, "power cut soak", cuts=60, count=90, mib=12, seed=11)


def test_an_upload_created_on_a_fresh_data_dir_survives_a_power_cut(powercut: PowerCut, tmp_path: Path) -> None:
    """The server creates models/, staging/ and staging/uploads/ at its first start: unless their parents are
    fsynced, a power cut takes the folders, and every upload in them, away (found by the scenario below)."""
    data = powercut.mountpoint / "data"
    data.mkdir()
    fsync_directory(powercut.mountpoint)
    server = ServerProcess(data, tmp_path / "server.log").start()
    try:
        client = TusClient(server.url)
        created = client.create(10, metadata={"filename": "m.gguf"})
        assert created.status_code == 201, created.text
        server.kill()
        powercut.cut()
        server.start()
        head = client.head(created.headers["Location"])
        assert head.status_code == 200 and head.headers["Upload-Offset"] == "0"
        assert (powercut.mountpoint / "data" / "models").is_dir()
    finally:
        server.stop(timeout=5)
