"""Receiving a body straight off the socket, by a thread of its own.

For large PATCH bodies without Upload-Checksum, on a server that offers its sockets
(server/socket_body.py). Where the file system allows O_DIRECT (and --direct-io is on), the bytes are read
into a few buffers that store/direct.py writes to the disk and hashes while the next ones fill: no page
cache on the way. Otherwise they never enter Python: the kernel moves them from the socket into a pipe
and from the pipe into the page cache, and the running sha256 reads them where they lie there
(UploadWriter.splice_in). The promises are receive_body's: whatever stops the body (a disconnect, a
stall, a release request, shutdown, a full disk) the bytes that arrived are written and synced before the
lock is let go, so the offset reported afterwards is durable: both end in body.finish_body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import select
import threading
import time
from concurrent.futures import Executor

from modeldrop.server import errors, gguf
from modeldrop.server.socket_body import SocketBody, TakenBody
from modeldrop.server.store.direct import DirectAppender, open_direct
from modeldrop.server.store.filestore import UploadWriter
from modeldrop.server.tus.body import BodyLimits, BodyResult, Ending, Interruption, finish_body, stopped_error

PIPE_BYTES = 1024 * 1024  # moved per splice; the default pipe (64 KiB) costs 16 times the system calls
_F_SETPIPE_SZ = 1031

COMPLETE, DISCONNECTED, IDLE, STOPPED = "complete", "disconnected", "idle", "stopped"


class SocketPump:
    """One request's body, from the socket into the writer; `run` blocks, so it runs in a thread of its own.

    It waits for bytes with poll() on the socket and on a wake-up pipe, so `stop` ends it at once, and
    syncs every sync interval itself: the thread is this request's alone, so a sync holds up no one else.
    """

    def __init__(self, taken: TakenBody, writer: UploadWriter, limits: BodyLimits) -> None:
        self.taken = taken
        self.writer = writer
        self.limits = limits
        self.remaining = taken.remaining
        self.direct = False  # whether the body went to the file with O_DIRECT
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poller = select.poll()
        self._poller.register(taken.fd, select.POLLIN)
        self._poller.register(self._wake_read, select.POLLIN)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"s")

    def close(self) -> None:
        """Once run() has returned: the socket is the pump's own duplicate, the server keeps its own."""
        for fd in (self._wake_read, self._wake_write, self.taken.fd):
            os.close(fd)

    def run(self) -> str:
        """Returns how the body ended: COMPLETE, DISCONNECTED, IDLE or STOPPED. Raises NotGGUF, or the
        OSError of a failed write (the writer's offset then counts exactly the bytes in the file)."""
        head, ended = self.taken.head, None
        if self.limits.check_magic and self.limits.start < len(gguf.MAGIC):
            head, ended = self._receive_magic(head)
        if head:
            self.writer.write([head])
        if ended is not None:
            return ended
        appender = open_direct(self.writer) if self.limits.direct_io else None
        if appender is None:
            return self._splice_rest()
        self.direct = True
        try:
            return self._receive_direct(appender)
        finally:
            appender.close()

    def _receive_magic(self, head: bytes) -> tuple[bytes, str | None]:
        """Reads until the body covers the GGUF magic; an honest prefix of it is kept if the body ends."""
        ended = None
        while gguf.magic_verdict(head, self.limits.start) is None and self.remaining and ended is None:
            try:
                data = os.read(self.taken.fd, min(self.remaining, len(gguf.MAGIC) - self.limits.start - len(head)))
            except BlockingIOError:
                ended = self._wait()
                continue
            except OSError:
                data = b""
            if not data:
                ended = DISCONNECTED
            head += data
            self.remaining -= len(data)
        if gguf.magic_verdict(head, self.limits.start) is False:
            raise errors.NotGGUF()
        return head, ended

    def _splice_rest(self) -> str:
        pipe_read, pipe_write = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # a smaller pipe only means more calls
                fcntl.fcntl(pipe_write, _F_SETPIPE_SZ, PIPE_BYTES)
            while self.remaining:
                if self._stop.is_set():
                    return STOPPED
                try:
                    moved = os.splice(self.taken.fd, pipe_write, min(PIPE_BYTES, self.remaining),
                                      flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    ended = self._wait()
                    if ended is not None:
                        return ended
                    continue
                except OSError:  # reset, or any other failure of the connection
                    return DISCONNECTED
                if not moved:
                    return DISCONNECTED
                self.writer.splice_in(pipe_read, moved)
                self.remaining -= moved
                if self.writer.sync_due():
                    self.writer.sync_interval_step()
            return COMPLETE
        finally:
            os.close(pipe_read)
            os.close(pipe_write)

    def _receive_direct(self, appender: DirectAppender) -> str:
        """Receives into the appender's buffers, which it writes with O_DIRECT and hashes while the next
        fills; whatever ends the body, what arrived is handed over and drained before returning."""
        ended = COMPLETE
        while self.remaining and ended == COMPLETE:
            space = appender.space(self.remaining)
            filled = 0
            try:
                while filled < len(space):
                    if self._stop.is_set():
                        ended = STOPPED
                        break
                    try:
                        count = os.readv(self.taken.fd, [space[filled:]])
                    except BlockingIOError:
                        waited = self._wait()
                        if waited is not None:
                            ended = waited
                            break
                        continue
                    except OSError:  # reset, or any other failure of the connection
                        count = 0
                    if not count:
                        ended = DISCONNECTED
                        break
                    filled += count
            finally:
                space.release()
                appender.commit(filled)
            self.remaining -= filled
            if appender.position - self.writer.synced_offset >= self.writer.sync_interval:
                appender.drain()
                self.writer.sync_interval_step()
        appender.drain()
        return ended

    def _wait(self) -> str | None:
        """Until the socket is readable (None: read it to see what came), stopped, or idle too long."""
        deadline = time.monotonic() + self.limits.idle_timeout
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return IDLE
            events = self._poller.poll(max(1, int(left * 1000)))
            if any(fd == self._wake_read for fd, _ in events):
                break
            if events:
                return None
        return STOPPED


async def receive_from_socket(body: SocketBody, taken: TakenBody, writer: UploadWriter, limits: BodyLimits,
                              interruption: Interruption, threads: Executor) -> BodyResult:
    """receive_body for a body taken off the socket; `threads` runs the pump, one thread per request."""
    try:
        pump = SocketPump(taken, writer, limits)
    except OSError:  # out of descriptors: the request fails, the connection closes after the answer
        os.close(taken.fd)
        body.give_back(complete=False)
        raise
    work = asyncio.get_running_loop().run_in_executor(threads, pump.run)
    ended = STOPPED
    ending = Ending()
    while True:
        try:
            ended = await asyncio.shield(work)
            break
        except asyncio.CancelledError:
            pump.stop()
            if not interruption.absorb():
                raise  # not ours (the server is being killed): nothing to save
            # ours: the pump stops at its next step, and what it stored is synced below
        except errors.HTTPError as exc:
            ending.stopped = exc
            break
        except OSError as exc:
            ending.write_failed = exc
            break
    pump.close()
    ending.disconnected = ended == DISCONNECTED
    if ended == IDLE:
        ending.stopped = stopped_error(errors.ReadTimeout, f"nothing received for {limits.idle_timeout:g}s")
    elif ended == STOPPED and ending.stopped is None and ending.write_failed is None:
        ending.stopped = stopped_error(interruption.error, interruption.reason or "the server stopped it")
    result = await finish_body(writer, limits, interruption, ending)
    body.give_back(complete=ended == COMPLETE and result.error is None)
    return dataclasses.replace(result, direct=pump.direct)
