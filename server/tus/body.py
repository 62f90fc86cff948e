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
import errno
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import ClientDisconnect

from modeldrop.server import errors, gguf
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


@dataclasses.dataclass
class BodyLimits:
    start: int                  # the upload's offset before this request
    length: int | None          # the upload's length, if known
    check_magic: bool           # the bytes at 0..3 must be GGUF (final uploads, not partials)
    idle_timeout: float
    checksum: tuple[str, bytes] | None = None


async def receive_body(
    stream: AsyncIterator[bytes],
    writer: UploadWriter,
    limits: BodyLimits,
    interruption: Interruption,
    run: Callable[..., asyncio.Future[Any]],
) -> BodyResult:
    """Streams the body into writer; `run(fn, *args)` runs fn in one of the body-writing threads, which
    only ever write and hash: syncs and everything else wait on the disk in the default executor."""
    loop = asyncio.get_running_loop()
    last_activity = loop.time()
    request_hash = hashlib.new(limits.checksum[0]) if limits.checksum else None
    hash_at_start = writer.hash_state()
    position = limits.start          # next byte's offset in the upload
    batch: list[bytes] = []
    batch_bytes = 0
    magic_pending = b""              # the first bytes of the file, held until the magic is confirmed
    in_flight: asyncio.Future[Any] | None = None
    stopped: errors.HTTPError | None = None
    disconnected = False
    write_failed: OSError | None = None
    # a smaller --sync-interval must not wait for a full batch: bytes still in a batch die with the process
    batch_limit = min(BATCH_BYTES, writer.sync_interval)

    def write_batch(chunks: list[bytes]) -> int:
        offset = writer.write(chunks)
        if request_hash is not None:
            for chunk in chunks:
                request_hash.update(chunk)
        return offset

    async def store_batch(chunks: list[bytes]) -> int:
        offset = await run(write_batch, chunks)
        if writer.sync_due():
            offset = await asyncio.to_thread(writer.sync_interval_step)
        return int(offset)

    async def submit(chunks: list[bytes]) -> None:
        nonlocal in_flight
        if in_flight is not None:
            await asyncio.shield(in_flight)  # cancelled here, the write goes on: see settle()
        in_flight = asyncio.ensure_future(store_batch(chunks))

    async def watch_idle() -> None:
        while True:
            await asyncio.sleep(min(1.0, limits.idle_timeout / 4))
            if loop.time() - last_activity > limits.idle_timeout:
                interruption.interrupt(f"nothing received for {limits.idle_timeout:g}s", errors.ReadTimeout)
                return

    watchdog = loop.create_task(watch_idle())
    try:
        async for chunk in stream:
            last_activity = loop.time()
            if limits.length is not None and position + len(chunk) > limits.length:
                chunk = chunk[: limits.length - position]
                stopped = errors.TooLarge("the request body goes past Upload-Length; the excess was discarded")
            if limits.check_magic and position < len(gguf.MAGIC):
                magic_pending += chunk
                verdict = gguf.magic_verdict(magic_pending, limits.start)
                if verdict is False:
                    magic_pending = b""
                    raise errors.NotGGUF()
                if verdict is None:
                    position += len(chunk)
                    continue
                chunk, magic_pending = magic_pending, b""
                position = limits.start
            if chunk:
                batch.append(chunk)
                batch_bytes += len(chunk)
                position += len(chunk)
            if stopped is not None:
                break
            if batch_bytes >= batch_limit:
                await submit(batch)
                batch, batch_bytes = [], 0
    except ClientDisconnect:
        disconnected = True
    except asyncio.CancelledError:
        if not interruption.absorb():
            raise  # a cancellation that is not ours (the server is being killed): nothing to save
        stopped = stopped_error(interruption.error, interruption.reason or "")
    except errors.HTTPError as exc:
        stopped = exc
    except OSError as exc:  # the previous batch failed to write (a full disk): stop, keep what is on disk
        write_failed = exc
    finally:
        watchdog.cancel()
    if magic_pending:  # the body ended before the magic was complete
        if gguf.magic_verdict(magic_pending, limits.start) is not False:
            batch.insert(0, magic_pending)  # an honest prefix of the magic: keep it
        elif stopped is None:
            stopped = errors.NotGGUF()
    try:
        if write_failed is not None:
            raise write_failed
        if in_flight is not None:
            await settle(in_flight, interruption)
            in_flight = None
        if batch:
            await settle(asyncio.ensure_future(store_batch(batch)), interruption)
        if request_hash is not None and limits.checksum is not None:
            complete = stopped is None and not disconnected
            if not complete or request_hash.digest() != limits.checksum[1]:
                await settle(off_loop(writer.rollback, limits.start, hash_at_start), interruption)
                if complete:
                    stopped = errors.ChecksumMismatch()
        offset = await settle(off_loop(writer.sync), interruption)
    except OSError as exc:
        with contextlib.suppress(Exception):
            if in_flight is not None:
                await settle(in_flight, interruption)
        if limits.checksum is not None:  # the digest covers the whole request, which never arrived
            offset = await settle(off_loop(_roll_back, writer, limits.start, hash_at_start), interruption)
        else:  # the file keeps only whole batches, so the running hash still matches it
            offset = await settle(off_loop(_roll_back, writer, writer.offset, writer.hash_state()), interruption)
        stopped = storage_error(exc)
    interruption.disarm()  # the body is stored: what comes after (answer, unlock) must not be cut short
    return BodyResult(offset=int(offset), received=int(offset) - limits.start, error=stopped,
                      disconnected=disconnected)


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


def _roll_back(writer: UploadWriter, offset: int, hash_state: bytes | None) -> int:
    """After a failed write: back to offset (with Upload-Checksum, the request's start: none of its bytes
    can be verified) and synced; returns the offset."""
    writer.rollback(offset, hash_state)
    return writer.sync()


def storage_error(exc: OSError) -> errors.HTTPError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.InsufficientStorage("the disk is full; the bytes received so far are saved. Free space "
                                          "and resume the upload")
    return errors.InternalError(f"writing the upload failed ({exc.strerror}); the bytes received so far are saved")
