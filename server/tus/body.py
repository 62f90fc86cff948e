"""Receiving a request body into an upload: pipelined writes off the loop, stall and release handling.

The loop only collects chunks; a worker thread writes, hashes and syncs the previous batch meanwhile, so
disk and network overlap while memory stays bounded by two batches whatever the upload size.
Whatever stops the body (a disconnect, a stall, a release request, shutdown, a full disk) the bytes
that arrived are written and synced before the lock is let go: the offset reported afterwards is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect

from modeldrop.server import errors, gguf
from modeldrop.server.store import errors as store_errors
from modeldrop.server.store.filestore import UploadWriter

BATCH_BYTES = 4 * 1024 * 1024  # two in memory at once (one writing, one filling) keep RSS + ~8 MiB


class Interruption:
    """Lets another party stop a running body read: a release request, a stall, or shutdown.

    It cancels the request's task once. receive_body absorbs that cancellation wherever it lands, and
    once the body is stored it disarms the interruption: the request then answers and lets go itself.
    """

    def __init__(self) -> None:
        self.task = asyncio.current_task()
        self.reason: str | None = None
        self.error: type[errors.HTTPError] = errors.InternalError
        self._pending = False

    def interrupt(self, reason: str, error: type[errors.HTTPError] = errors.InternalError) -> None:
        if self.reason is None and self.task is not None:
            self.reason = reason
            self.error = error
            self._pending = True
            self.task.cancel()

    def absorb(self) -> bool:
        """On CancelledError: True, and the cancellation withdrawn, if it was this interruption's."""
        if not self._pending or self.task is None:
            return False
        self._pending = False
        self.task.uncancel()
        return True

    def disarm(self) -> None:
        self.task = None


@dataclasses.dataclass
class BodyResult:
    offset: int                 # durable offset after this request
    received: int               # body bytes stored by this request
    error: errors.HTTPError | None = None  # why the body stopped early, if it did
    disconnected: bool = False
    direct: bool = False        # taken off the socket and written with O_DIRECT (store/direct.py)


@dataclasses.dataclass
class BodyLimits:
    start: int                  # the upload's offset before this request
    length: int | None          # the upload's length, if known
    check_magic: bool           # the bytes at 0..3 must be GGUF (final uploads, not partials)
    idle_timeout: float
    checksum: tuple[str, bytes] | None = None
    direct_io: bool = False     # a body taken off the socket may be written with O_DIRECT (store/direct.py)


@dataclasses.dataclass
class Ending:
    """How reading a body stopped, handed to finish_body."""
    stopped: errors.HTTPError | None = None  # the error that stopped it early (too long, not GGUF, interrupted...)
    disconnected: bool = False
    write_failed: OSError | None = None      # a write of its bytes failed (a full disk)


async def receive_body(
    stream: AsyncIterator[bytes],
    writer: UploadWriter,
    limits: BodyLimits,
    interruption: Interruption,
    run: Callable[..., asyncio.Future[Any]],
) -> BodyResult:
    """Streams the body into writer; `run(fn, *args)` runs fn in one of the body-writing threads, which
    only ever write and hash: syncs and everything else wait on the disk in the default executor."""
    body = _StreamedBody(writer, limits, interruption, run)
    ending = await body.read(stream)
    return await finish_body(writer, limits, interruption, ending, body.store_rest)


async def finish_body(writer: UploadWriter, limits: BodyLimits, interruption: Interruption, ending: Ending,
                      store_rest: Callable[[Ending], Awaitable[errors.HTTPError | None]] | None = None) -> BodyResult:
    """The one ending of every body, read through ASGI or spliced off the socket.

    Whatever stopped it, the bytes that arrived are stored (store_rest: what the reader still holds) and
    synced before the lock is let go, so the offset returned is durable. After a failed write the file
    keeps the bytes that reached it (with Upload-Checksum none of the request's, which cannot be verified)
    and the answer says why. Then the interruption is disarmed: the answer and the unlock are not cut short.
    """
    stopped = ending.stopped
    try:
        if ending.write_failed is not None:
            raise ending.write_failed
        if store_rest is not None:
            stopped = await store_rest(ending) or stopped
        offset = await settle(off_loop(writer.sync), interruption)
    except OSError as exc:
        offset = await settle(off_loop(writer.keep_what_arrived, limits.checksum is not None), interruption)
        stopped = errors.from_store(store_errors.write_failure(exc))
    interruption.disarm()
    return BodyResult(offset=int(offset), received=int(offset) - limits.start, error=stopped,
                      disconnected=ending.disconnected)


class _MagicGate:
    """Holds an upload's first bytes until they show the GGUF magic (gguf.magic_verdict)."""

    def __init__(self, start: int, enabled: bool) -> None:
        self.start = start
        self.open = not enabled or start >= len(gguf.MAGIC)
        self.held = b""  # a true prefix of the magic, stored if the body ends before the rest of it

    def admit(self, chunk: bytes) -> bytes:
        """What may be stored now of the bytes so far: nothing while the magic is undecided; NotGGUF if wrong."""
        if self.open:
            return chunk
        self.held += chunk
        verdict = gguf.magic_verdict(self.held, self.start)
        if verdict is None:
            return b""
        admitted, self.held = self.held, b""
        if verdict is False:
            raise errors.NotGGUF()
        self.open = True
        return admitted


class _StreamedBody:
    """One body read through ASGI: the loop collects chunks into batches, and a body-writing thread writes
    (and hashes, and every sync interval syncs) the previous batch meanwhile."""

    def __init__(self, writer: UploadWriter, limits: BodyLimits, interruption: Interruption,
                 run: Callable[..., asyncio.Future[Any]]) -> None:
        self.writer = writer
        self.limits = limits
        self.interruption = interruption
        self.run = run
        self.request_hash = hashlib.new(limits.checksum[0]) if limits.checksum else None
        self.magic = _MagicGate(limits.start, limits.check_magic)
        self.position = limits.start  # the next byte's offset in the upload
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        # a smaller --sync-interval must not wait for a full batch: bytes still in a batch die with the process
        self.batch_limit = min(BATCH_BYTES, writer.sync_interval)
        self.in_flight: asyncio.Future[Any] | None = None
        self.last_activity = 0.0

    async def read(self, stream: AsyncIterator[bytes]) -> Ending:
        """Takes chunks until the body ends or something stops it."""
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        ending = Ending()
        watchdog = loop.create_task(self._watch_idle())
        try:
            async for chunk in stream:
                self.last_activity = loop.time()
                if self.limits.length is not None and self.position + len(chunk) > self.limits.length:
                    chunk = chunk[: self.limits.length - self.position]
                    ending.stopped = errors.TooLarge("the request body goes past Upload-Length; the excess was "
                                                     "discarded")
                self.position += len(chunk)
                admitted = self.magic.admit(chunk)
                if admitted:
                    self.batch.append(admitted)
                    self.batch_bytes += len(admitted)
                if ending.stopped is not None:
                    break
                if self.batch_bytes >= self.batch_limit:
                    await self._submit()
        except ClientDisconnect:
            ending.disconnected = True
        except asyncio.CancelledError:
            if not self.interruption.absorb():
                raise  # a cancellation that is not ours (the server is being killed): nothing to save
            ending.stopped = stopped_error(self.interruption.error, self.interruption.reason or "")
        except errors.HTTPError as exc:
            ending.stopped = exc
        except OSError as exc:  # the previous batch failed to write (a full disk): stop, keep what is on disk
            ending.write_failed = exc
        finally:
            watchdog.cancel()
        return ending

    async def store_rest(self, ending: Ending) -> errors.HTTPError | None:
        """After the last chunk: what is in flight and in memory is written; then Upload-Checksum is checked,
        and the request's bytes are cut off again unless it arrived whole and matches (ChecksumMismatch)."""
        try:
            if self.in_flight is not None:
                await settle(self.in_flight, self.interruption)
                self.in_flight = None
            rest = [self.magic.held, *self.batch] if self.magic.held else self.batch  # an honest start of the magic
            if rest:
                await settle(asyncio.ensure_future(self._store(rest)), self.interruption)
        except OSError:
            with contextlib.suppress(Exception):  # no write may still run when the file is cut back
                if self.in_flight is not None:
                    await settle(self.in_flight, self.interruption)
            raise
        if self.request_hash is None or self.limits.checksum is None:
            return None
        complete = ending.stopped is None and not ending.disconnected
        if complete and self.request_hash.digest() == self.limits.checksum[1]:
            return None
        await settle(off_loop(self.writer.undo_request), self.interruption)
        return errors.ChecksumMismatch() if complete else None

    async def _submit(self) -> None:
        """Hands the full batch to a body-writing thread once the previous one is written."""
        if self.in_flight is not None:
            await asyncio.shield(self.in_flight)  # cancelled here, the write goes on: store_rest waits for it
        self.in_flight = asyncio.ensure_future(self._store(self.batch))
        self.batch, self.batch_bytes = [], 0

    async def _store(self, chunks: list[bytes]) -> int:
        offset = await self.run(self._write, chunks)
        if self.writer.sync_due():
            offset = await asyncio.to_thread(self.writer.sync_interval_step)
        return int(offset)

    def _write(self, chunks: list[bytes]) -> int:
        """In a body-writing thread: the file and its running sha256, and the request's own checksum."""
        offset = self.writer.write(chunks)
        if self.request_hash is not None:
            for chunk in chunks:
                self.request_hash.update(chunk)
        return offset

    async def _watch_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.limits.idle_timeout / 4))
            if loop.time() - self.last_activity > self.limits.idle_timeout:
                self.interruption.interrupt(f"nothing received for {self.limits.idle_timeout:g}s", errors.ReadTimeout)
                return


async def settle(work: asyncio.Future[Any], interruption: Interruption) -> Any:
    """Waits for work running in a thread even if interrupted meanwhile: the thread goes on writing,
    so the file must not be closed, the lock released or an offset reported before it ends."""
    while True:
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if not interruption.absorb():
                raise  # not ours (the server is being killed): nothing to wait for
            # ours, after the whole body arrived: finish storing it, the request then lets go


def stopped_error(error: type[errors.HTTPError], reason: str) -> errors.HTTPError:
    return error(f"this request was stopped: {reason}; the bytes received so far are saved, resume from Upload-Offset")


def off_loop(function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Runs function in a thread as a task of its own: an interruption of the request cannot cancel it, and
    settle() waits for it to end."""
    return asyncio.ensure_future(asyncio.to_thread(function, *args))
