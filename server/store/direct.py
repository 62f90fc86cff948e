"""Appending a body with O_DIRECT: from memory to the disk, hashed from the same memory alongside.

Bytes written through the page cache cost a copy into fresh page-cache pages, which on virtual machines
are slow to fault in (bench/: a buffered write of a large upload ran at about half the speed of the disk
with O_DIRECT), and the running hash then reads them back from there. Here the receiver fills a buffer
of its own, one thread writes it to the file with O_DIRECT and another hashes it, while the receiver
fills the next: three stages on two cores instead of one thread doing them in turn. It also keeps a
50 GB upload from passing through the page cache llama-server's mapped model lives in.

The promises are UploadWriter's: the writer's offset is the file's length and counts only bytes that are
in the file; a failed write leaves it exactly at the bytes that reached the file (the running hash is
then given up, and the finalizer reads the file once instead). `drain` brings the writer's offset and
hash up to everything handed over, so a sync after it makes that offset durable.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import threading

from modeldrop.server import libc
from modeldrop.server.store.filestore import UploadWriter
from modeldrop.server.threads import yield_to_the_loop

ALIGN = 4096  # O_DIRECT's file offsets, lengths and memory addresses: a multiple of the block size
BUFFER_BYTES = 2 * 1024 * 1024
BUFFERS = 4  # per request: 8 MiB in memory, whatever the upload's size
# at once; more splice through the page cache. 16 bodies at once with O_DIRECT took 2.3x the splice path's
# bytes per second, but their threads starved the event loop (HEAD p99 163 ms, target 25). With the body
# threads below the loop's priority (server/threads.py), a bench of 16 uploads at once gave (2 runs each):
# at most 1 O_DIRECT body 742 MB/s, p99 12.8 ms; 4: 936 MB/s, 12.4 ms; 8: 992, 30.3 ms; 16: 1137, 68.6 ms.
# Past 4 the GIL, not the CPU share, holds the loop up: a lower priority still did not help.
MAX_REQUESTS = 4
# A body that starts while this many others are being received splices, whatever slot is free: with 64
# uploads of 64 MiB at once, 4 O_DIRECT bodies among 60 spliced held HEAD p99 at 36.6 ms, splicing alone
# at 20.7 ms (bench, 2026-12-03); up to 16 at once they were 14.3 ms and 1.3x the bytes per second.
BUSY_BODIES = 16

# Local disk file systems whose O_DIRECT is a direct write to the device that fdatasync then makes durable
# with the file's size. Elsewhere (FUSE, network and layered file systems, tmpfs) O_DIRECT means what each
# implementation makes of it, or is refused: those splice through the page cache, which every one supports.
DIRECT_FILE_SYSTEMS = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
}

_slots = threading.BoundedSemaphore(MAX_REQUESTS)
# Buffers kept from one request to the next: fresh anonymous memory is faulted in page by page on first
# touch, which these VMs make slow, and a client sending 64 MiB PATCHes would pay it on every request.
# At most MAX_REQUESTS * BUFFERS of them, 32 MiB, for the life of the process.
_spare_buffers: list[mmap.mmap] = []
_spare_lock = threading.Lock()


def _take_buffers() -> list[mmap.mmap]:
    with _spare_lock:
        taken = _spare_buffers[-BUFFERS:]
        del _spare_buffers[-BUFFERS:]
    return taken + [mmap.mmap(-1, BUFFER_BYTES) for _ in range(BUFFERS - len(taken))]


def _give_back_buffers(buffers: list[mmap.mmap]) -> None:
    with _spare_lock:
        kept = buffers[:max(0, MAX_REQUESTS * BUFFERS - len(_spare_buffers))]
        _spare_buffers.extend(kept)
    for buffer in buffers[len(kept):]:
        with contextlib.suppress(BufferError):  # a view still held elsewhere: the GC frees it later
            buffer.close()


class DirectAppender:
    """Takes filled buffers (`space` then `commit`) and appends them to a writer's file in order."""

    def __init__(self, writer: UploadWriter, fd: int) -> None:
        self.writer = writer
        self.fd = fd  # the same file opened again with O_DIRECT
        self.position = writer.offset  # where the next committed byte goes
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._buffers = _take_buffers()
        for buffer in self._buffers:
            self._free.put(buffer)
        self._to_write: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
        self._to_hash: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self._written = threading.Condition()
        self._outstanding = 0  # buffers committed and not yet both written and hashed
        self._failure: OSError | None = None
        self._done: dict[int, int] = {}  # buffer id -> stages finished (write, hash)
        self._threads = [threading.Thread(target=self._write_loop, name="modeldrop-direct-write", daemon=True)]
        if writer.hasher is not None:
            self._threads.append(threading.Thread(target=self._hash_loop, name="modeldrop-direct-hash", daemon=True))
        for thread in self._threads:
            thread.start()
        self._current: mmap.mmap | None = None

    def space(self, most: int) -> memoryview:
        """A free buffer to receive into: at most `most` bytes, fewer to bring the file to an aligned offset
        (a resumed upload can stop anywhere), so that every later buffer is written with O_DIRECT."""
        buffer = self._free.get()
        if self._failure is not None:
            self._free.put(buffer)
            self.drain()  # raises, with the writer's offset at the bytes that reached the file
        self._current = buffer
        size = min(most, BUFFER_BYTES)
        misaligned = self.position % ALIGN
        if misaligned:
            size = min(size, ALIGN - misaligned)
        return memoryview(buffer)[:size]

    def commit(self, count: int) -> None:
        """Hands over the first count bytes of the buffer `space` gave (0: gives it back unused)."""
        buffer, self._current = self._current, None
        assert buffer is not None, "commit without space"
        if not count:
            self._free.put(buffer)
            return
        with self._written:
            self._outstanding += 1
            self._done[id(buffer)] = 0 if self.writer.hasher is not None else 1
        self._to_write.put((buffer, count, self.position))
        if self.writer.hasher is not None:
            self._to_hash.put((buffer, count))
        self.position += count

    def drain(self) -> int:
        """Waits until every committed byte is in the file and hashed; moves the writer's offset and hash
        there and returns the offset. Raises the OSError of a failed write, the writer's offset then at
        the file's length."""
        with self._written:
            self._written.wait_for(lambda: self._outstanding == 0)
        if self._failure is not None:
            self._give_up_hash()
            self.writer.offset = self.writer.hashed_offset = os.fstat(self.fd).st_size
            self._raise_failure()
        self.writer.offset = self.writer.hashed_offset = self.position
        return self.position

    def close(self) -> None:
        """After drain (or after a failure): stops the threads and lets the buffers and the descriptor go."""
        self._to_write.put(None)
        self._to_hash.put(None)
        for thread in self._threads:
            thread.join()
        _give_back_buffers(self._buffers)
        os.close(self.fd)
        _slots.release()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _give_up_hash(self) -> None:
        """A write failed part-way: the hasher may have seen bytes the file lacks, so it is let go."""
        self.writer.hasher = None
        self.writer.store.drop_checkpoint(self.writer.info.id)

    def _finished(self, buffer: mmap.mmap) -> None:
        with self._written:
            self._done[id(buffer)] += 1
            if self._done[id(buffer)] == 2:
                del self._done[id(buffer)]
                self._outstanding -= 1
                self._free.put(buffer)
                self._written.notify_all()

    def _write_loop(self) -> None:
        yield_to_the_loop()
        while (item := self._to_write.get()) is not None:
            buffer, count, position = item
            if self._failure is None:
                with memoryview(buffer) as whole:
                    try:
                        self._write(whole[:count], position)
                    except OSError as exc:
                        self._failure = exc
            self._finished(buffer)

    def _write(self, view: memoryview, position: int) -> None:
        direct = len(view) - len(view) % ALIGN if position % ALIGN == 0 else 0
        done = 0
        while done < direct:
            done += os.pwrite(self.fd, view[done:direct], position + done)
        while done < len(view):  # a short last piece, or the piece that aligns the file: through the page cache
            done += os.pwrite(self.writer.fd, view[done:], position + done)

    def _hash_loop(self) -> None:
        yield_to_the_loop()
        while (item := self._to_hash.get()) is not None:
            buffer, count = item
            hasher = self.writer.hasher
            if hasher is not None and self._failure is None:
                view = memoryview(buffer)[:count]
                try:
                    hasher.update(view)
                finally:
                    view.release()
            self._finished(buffer)


def open_direct(writer: UploadWriter) -> DirectAppender | None:
    """An appender for the writer's file, or None where O_DIRECT is not used (a file system not in
    DIRECT_FILE_SYSTEMS, or MAX_REQUESTS bodies already hold their buffers): the caller splices instead."""
    if libc.file_system_type(writer.fd) not in DIRECT_FILE_SYSTEMS:
        return None
    if not _slots.acquire(blocking=False):
        return None
    try:
        # the descriptor the writer already holds, opened again: the same inode, never the name again
        fd = os.open(f"/proc/self/fd/{writer.fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        _slots.release()
        return None
    try:
        return DirectAppender(writer, fd)
    except BaseException:
        os.close(fd)
        _slots.release()
        raise
