"""What modeldrop's stack costs on its own: the leanest tus-shaped app on uvicorn (uvloop + httptools).

    FILES_DIR=DIR SHA256=0|1 python -m uvicorn bench.stack_app:app --loop uvloop --http httptools

POST answers 201 with a Location. PATCH appends its body to DIR/<id> in batches of modeldrop's size, one
batch written in a thread while the next one fills; with SHA256=1 a second thread hashes each batch while
it is written, as modeldrop does, and the last PATCH leaves the digest in DIR/<id>.sha256. Writeback is
started every 8 MiB (without it the kernel throttles the writer). No offset checks, locks, metadata,
syncs, page-cache release or finalizing: the bench's reference for "the same stack minus everything tus",
to tell what the stack and hashing cost from what modeldrop's own code costs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

from modeldrop.server import libc
from modeldrop.server.tus.body import BATCH_BYTES

FILES = Path(os.environ.get("FILES_DIR", "."))
HASHING = os.environ.get("SHA256", "1") == "1"
KICK = 8 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2

libc.keep_freed_heap()  # as modeldrop's serve does: without it every body byte is page-faulted once more
write_pool = concurrent.futures.ThreadPoolExecutor(1)
hash_pool = concurrent.futures.ThreadPoolExecutor(1)
next_id = itertools.count(1)


@dataclasses.dataclass
class Upload:
    path: Path
    length: int
    fd: int
    offset: int = 0
    kicked: int = 0
    hasher: Any = dataclasses.field(default_factory=hashlib.sha256)


uploads: dict[str, Upload] = {}


def store(upload: Upload, chunks: list[bytes]) -> None:
    hashing = hash_pool.submit(_hash, upload.hasher, chunks) if HASHING else None
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.pwrite(upload.fd, view, upload.offset)
            upload.offset += written
            view = view[written:]
    if upload.offset - upload.kicked >= KICK:
        libc.libc.sync_file_range(upload.fd, upload.kicked, upload.offset - upload.kicked, SYNC_FILE_RANGE_WRITE)
        upload.kicked = upload.offset
    if hashing is not None:
        hashing.result()


def _hash(hasher: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


def finish(upload: Upload) -> None:
    os.close(upload.fd)
    if HASHING:
        upload.path.with_name(upload.path.name + ".sha256").write_text(upload.hasher.hexdigest())


async def receive_into(upload: Upload, receive: Any) -> None:
    loop = asyncio.get_running_loop()
    batch: list[bytes] = []
    size = 0
    writing: asyncio.Future[None] | None = None
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
        if message.get("body"):
            batch.append(message["body"])
            size += len(message["body"])
        if size >= BATCH_BYTES or (batch and not more):
            if writing is not None:
                await writing
            writing = loop.run_in_executor(write_pool, store, upload, batch)
            batch, size = [], 0
    if writing is not None:
        await writing


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    status, answer = 204, [(b"tus-resumable", b"1.0.0")]
    if scope["method"] == "POST":
        upload_id = str(next(next_id))
        path = FILES / upload_id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        uploads[upload_id] = Upload(path, int(headers["upload-length"]), fd)
        status = 201
        answer.append((b"location", f"/files/{upload_id}".encode()))
    elif scope["method"] == "PATCH":
        upload = uploads[scope["path"].rstrip("/").rsplit("/", 1)[-1]]
        await receive_into(upload, receive)
        if upload.offset == upload.length:
            await asyncio.get_running_loop().run_in_executor(write_pool, finish, upload)
        answer.append((b"upload-offset", str(upload.offset).encode()))
    await send({"type": "http.response.start", "status": status, "headers": answer})
    await send({"type": "http.response.body", "body": b""})
