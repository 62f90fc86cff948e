"""The tus 1.0 protocol: OPTIONS, POST, HEAD, PATCH, DELETE on `/files/`.

Every request is checked in a fixed order before a body byte is stored (tusd's PatchFile order):
cheap headers, then auth, then the upload's record, then the lock, then the body.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import email.utils
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modeldrop.server import errors
from modeldrop.server.admission import Admission, read_set
from modeldrop.server.dedupe import MATCH_HEADER, Dedupe, Kind, Match
from modeldrop.server.metrics import Metrics
from modeldrop.server.settings import Settings
from modeldrop.server.socket_body import EXTENSION as SOCKET_BODY
from modeldrop.server.store import concat, direct
from modeldrop.server.store.cache import UploadCache
from modeldrop.server.store.dedupe import Claim, token_fingerprint
from modeldrop.server.store.errors import StoreError
from modeldrop.server.store.filestore import FileStore, UploadWriter
from modeldrop.server.store.info import CONCAT_FINAL, CONCAT_PARTIAL, UploadInfo
from modeldrop.server.threads import yield_to_the_loop
from modeldrop.server.tus import headers as tus
from modeldrop.server.tus.body import BodyLimits, BodyResult, Interruption, receive_body, stopped_error
from modeldrop.server.tus.interfaces import FinalizeQueue, Locker, UploadLock
from modeldrop.server.tus.linger import answer_unread, refuse_unread
from modeldrop.server.tus.spliced import receive_from_socket

log = logging.getLogger("modeldrop.tus")

BASE_PATH = "/files/"
EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "termination", "expiration",
              "checksum", "concatenation")
STATUS_HEADER = "Modeldrop-Status"
SPLICE_FROM = 1024 * 1024  # bodies at least this large are taken off the socket when the server offers it
SOCKET_THREADS = 256       # requests taking their body off the socket at once; more read through ASGI


class _ReleaseRelay:
    """An upload lock's release callback: interrupts the body being read, once one is; before that, the
    lock's release_requested flag keeps the request and _write_body lets go before reading a byte."""

    def __init__(self) -> None:
        self.interruption: Interruption | None = None

    def __call__(self) -> None:
        if self.interruption is not None:
            self.interruption.interrupt("another request asked for this upload")


class TusHandler:
    def __init__(self, settings: Settings, store: FileStore, locker: Locker, admission: Admission,
                 finalizer: FinalizeQueue, metrics: Metrics, dedupe: Dedupe | None = None) -> None:
        self.settings = settings
        self.store = store
        self.locker = locker
        self.admission = admission
        self.finalizer = finalizer
        self.metrics = metrics
        self.dedupe = dedupe  # a creation that declares its sha256 may need no new upload (server/dedupe.py)
        self.active: dict[str, Interruption] = {}
        self.shutting_down = False
        # Bodies are written by a few threads and hashed alongside by as many (half the cores each), not
        # by a thread per upload: with 16 uploads, 16 threads each taking the GIL back after every write
        # held a HEAD up for 161 ms at p99 (bench/results/2026-11-24.md). Syncs, which only wait on the
        # disk, run in the default executor so they never hold up another upload's writes.
        threads = max(1, (os.cpu_count() or 2) // 2)
        self.write_pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="modeldrop-write",
                                                                initializer=yield_to_the_loop)
        self.hash_pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="modeldrop-hash",
                                                               initializer=yield_to_the_loop)
        # a body taken off the socket waits on it in a thread of its own for the whole request
        self.socket_pool = concurrent.futures.ThreadPoolExecutor(SOCKET_THREADS, thread_name_prefix="modeldrop-socket",
                                                                 initializer=yield_to_the_loop)
        self.socket_bodies = 0
        # HEAD answers from records inotify keeps fresh: only while every writer runs on this host
        self.records = UploadCache(store.uploads_dir, enabled=not locker.shared)
        self.options_headers = {
            "Tus-Resumable": tus.TUS_VERSION,
            "Tus-Version": tus.TUS_VERSION,
            "Tus-Extension": ",".join(EXTENSIONS),
            "Tus-Max-Size": str(settings.max_size),
            "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUM_ALGORITHMS),
        }

    # -- helpers --------------------------------------------------------------------------------

    def _run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Starts function in a body-writing thread now and returns its future (the pipeline awaits it later)."""
        return asyncio.get_running_loop().run_in_executor(self.write_pool, functools.partial(function, *args))

    def _base_url(self, request: Request) -> str:
        scheme, host = request.url.scheme, request.headers.get("host") or request.url.netloc
        if self.settings.trust_proxy:
            forwarded_scheme, forwarded_host = tus.parse_forwarded(request.headers)
            scheme = forwarded_scheme or scheme
            host = forwarded_host or host
        if (scheme, host.rsplit(":", 1)[-1]) in (("https", "443"), ("http", "80")):
            host = host.rsplit(":", 1)[0]
        return f"{scheme}://{host}"

    def _upload_headers(self, info: UploadInfo) -> dict[str, str]:
        headers = {"Tus-Resumable": tus.TUS_VERSION, STATUS_HEADER: f"/api/uploads/{info.id}"}
        if not info.is_complete or (info.is_partial and info.consumed_by is None):  # a partial waits for a final
            expires = max(info.last_write_at, info.created_at) + self.settings.expire_after
            headers["Upload-Expires"] = email.utils.formatdate(expires, usegmt=True)
        return headers

    def _check_common(self, request: Request) -> None:
        if self.shutting_down:
            raise errors.ServiceUnavailable(headers={"Retry-After": "5"})
        tus.check_tus_resumable(request.headers.get("tus-resumable"))
        self.admission.check_auth(request.headers)

    async def _load(self, upload_id: str) -> UploadInfo:
        return await asyncio.to_thread(self.store.load, upload_id)  # type: ignore[no-any-return]

    # -- OPTIONS --------------------------------------------------------------------------------

    async def options(self, request: Request) -> Response:
        return Response(status_code=204, headers=self.options_headers)

    # -- POST: creation, creation-with-upload, concatenation -------------------------------------

    async def post(self, request: Request) -> Response:
        self._check_common(request)
        h = request.headers
        concat = tus.parse_upload_concat(h.get("upload-concat"))
        metadata = tus.parse_metadata(h.get("upload-metadata"), self.settings.max_metadata)
        sha256 = tus.validate_sha256(metadata.get("sha256"))
        if concat is not None and concat.kind == CONCAT_FINAL:
            if "upload-length" in h or "upload-defer-length" in h:
                raise errors.InvalidHeader("a final concatenation must not send Upload-Length: it is the sum of "
                                           "its partial uploads")
            length: int | None = None
        else:
            length = tus.parse_creation_length(h)
            if length is not None and length > self.settings.max_size:
                raise errors.TooLarge(f"the upload is {length} bytes; this server accepts at most "
                                      f"{self.settings.max_size} (Tus-Max-Size)")
        is_partial = concat is not None and concat.kind == CONCAT_PARTIAL
        needs_name = not is_partial or "filename" in metadata  # a partial is not a model on its own
        filename = tus.validate_filename(metadata.get("filename")) if needs_name else None
        place = read_set(metadata, filename) if filename is not None and not is_partial else None
        token_fp = token_fingerprint(self.settings.token, h)
        if self.dedupe is not None and filename and sha256 and length and concat is None and "set" not in metadata:
            claim = Claim(filename, length, sha256, token_fp, h.get("upload-metadata", ""))
            match = await asyncio.to_thread(self.dedupe.match, claim)  # resumed, linked or installed already
            if match is not None:
                return await self._matched(request, match, bool(tus.parse_content_length(h)) or _chunked(h))
        if filename is not None and not is_partial:
            await asyncio.to_thread(self.admission.check_name_free, filename, place)
        if length == 0 and not is_partial:
            raise errors.NotGGUF("an empty file is not a GGUF model")
        body_type = h.get("content-type")
        content_length = tus.parse_content_length(h)
        has_body = bool(content_length) or "chunked" in h.get("transfer-encoding", "")
        if has_body:
            tus.check_patch_content_type(body_type)
            self.admission.check_append_size(content_length)
            body_limit = length if length is not None else self.settings.max_size
            if (content_length or 0) > body_limit:
                raise errors.TooLarge(f"the request body is {h['content-length']} bytes, more than the upload's "
                                      f"{body_limit}")

        info = UploadInfo(id=self.store.new_id(), length=length, metadata_header=h.get("upload-metadata", ""),
                          filename=filename, sha256_expected=sha256, created_at=time.time(), token_fp=token_fp,
                          concat=concat.kind if concat else None, set_name=place.set if place and place.named else None,
                          set_size=place.size if place and place.named else None)
        if concat is not None and concat.kind == CONCAT_FINAL:
            return await self._create_final(request, info, concat.parts)
        if has_body and length is None:
            await asyncio.to_thread(self.admission.check_unsized_body, content_length, _chunked(h))
        info = await asyncio.to_thread(self.admission.admit, length, functools.partial(self.store.create, info))
        self.metrics.uploads_created.inc()
        log.info("created upload=%s filename=%s length=%s%s", info.id, filename, length,
                 f" concat={info.concat}" if info.concat else "")
        location = f"{self._base_url(request)}{BASE_PATH}{info.id}"
        response_headers = {"Location": location, **self._upload_headers(info)}
        if has_body:
            async with await self._lock(info.id) as lock:
                info = await self._load(info.id)
                outcome = await self._write_body(request, info, lock)
                response_headers.update(self._upload_headers(outcome))
                response_headers["Upload-Offset"] = str(outcome.offset)
        return Response(status_code=201, headers=response_headers)

    async def _matched(self, request: Request, match: Match, has_body: bool) -> Response:
        """A creation the server needs no new upload for: 201 naming the upload it has (Modeldrop-Match says why),
        with its durable offset. The body of a creation-with-upload is stored only where it fits: at byte 0 of a
        resumed upload that has none yet; otherwise it is not read (the connection closes after the answer)."""
        info = match.info
        headers = {"Location": f"{self._base_url(request)}{BASE_PATH}{info.id}", **self._upload_headers(info),
                   "Upload-Offset": str(info.offset), "Upload-Length": str(info.length), MATCH_HEADER: match.kind}
        unread = has_body
        async with contextlib.AsyncExitStack() as held:
            if match.kind is Kind.RESUMED and not info.is_complete:  # a durable offset: a writer is asked to let go
                lock = await held.enter_async_context(await self._lock(info.id))
                info = await self._load(info.id)
                headers["Upload-Offset"] = str(info.offset)
                if has_body and info.offset == 0:
                    info, unread = await self._write_body(request, info, lock), False
                    headers.update(self._upload_headers(info))
                    headers["Upload-Offset"] = str(info.offset)
        response = JSONResponse({**match.body(), "offset": info.offset}, status_code=201, headers=headers)
        return answer_unread(request, response) if unread else response  # not read for nothing (tus/linger.py)

    async def _create_final(self, request: Request, info: UploadInfo, urls: tuple[str, ...]) -> Response:
        """Concatenation: the store assembles the final; this request holds the partials' locks meanwhile."""
        part_ids = tus.concat_part_ids(urls, BASE_PATH)
        async with self._holding(part_ids):
            parts = [await self._load(part_id) for part_id in part_ids]
            length = concat.final_length(parts)
            if length > self.settings.max_size:
                raise errors.TooLarge(f"the concatenated upload would be {length} bytes; at most "
                                      f"{self.settings.max_size} are accepted")
            if length == 0:
                raise errors.NotGGUF("an empty file is not a GGUF model")
            info = dataclasses.replace(info, length=length, parts=tuple(part_ids))
            info = await asyncio.to_thread(concat.begin_final, self.store, info, parts,
                                           functools.partial(self.admission.admit, length))
        try:
            info = await asyncio.to_thread(concat.fill_final, self.store, info, parts)
        except Exception:
            with contextlib.suppress(errors.HTTPError, StoreError):
                async with self._holding(part_ids):
                    await asyncio.to_thread(self.store.release_parts, info.id, part_ids)
            raise
        self.metrics.uploads_created.inc()
        log.info("created final upload=%s filename=%s length=%s parts=%d", info.id, info.filename, length, len(parts))
        await self._completed(info)
        headers = {"Location": f"{self._base_url(request)}{BASE_PATH}{info.id}", **self._upload_headers(info)}
        return Response(status_code=201, headers=headers)

    # -- HEAD -----------------------------------------------------------------------------------

    async def head(self, request: Request) -> Response:
        self._check_common(request)
        info = await self.snapshot(request.path_params["upload_id"])
        headers = {**self._upload_headers(info), "Cache-Control": "no-store", "Upload-Offset": str(info.offset)}
        if info.length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(info.length)
        if info.metadata_header:
            headers["Upload-Metadata"] = info.metadata_header
        if info.concat == CONCAT_PARTIAL:
            headers["Upload-Concat"] = "partial"
        elif info.concat == CONCAT_FINAL:
            base = self._base_url(request)
            headers["Upload-Concat"] = "final;" + " ".join(f"{base}{BASE_PATH}{part}" for part in info.parts)
        return Response(status_code=200, headers=headers)

    async def snapshot(self, upload_id: str) -> UploadInfo:
        """The upload's record with a durable offset, for an offset retrieval (tus HEAD, RUFH HEAD): from the
        cache, or read while nobody writes it, or after asking a request still writing it to save and let go."""
        info = self.records.get(upload_id)
        if info is None:
            token = self.records.token()
            info = await asyncio.to_thread(self._durable_snapshot, upload_id)
            if info is None:
                # a stale PATCH holds this upload: ask it to save and let go, so the offset we report is durable
                async with await self._lock(upload_id):
                    info = await self._load(upload_id)
            else:
                self.records.put(info, token)
        return info

    def _durable_snapshot(self, upload_id: str) -> UploadInfo | None:
        """In one worker-thread call: the upload's record, read while nobody writes it; None if someone does.

        HEAD is what resuming clients wait on, so its common case must not bounce between the event loop
        and worker threads (each hop costs milliseconds when many uploads keep both cores busy).
        """
        info = self.store.load(upload_id)
        if info.is_complete or info.is_final:
            return info  # nothing writes a complete upload, nor a final (assembled before its POST answers)
        held = self.locker.try_acquire(f"upload-{upload_id}")
        if held is None:
            return None
        try:
            return self.store.load(upload_id)
        finally:
            held.release()

    # -- PATCH ----------------------------------------------------------------------------------

    async def patch(self, request: Request) -> Response:
        self._check_common(request)
        h = request.headers
        tus.check_patch_content_type(h.get("content-type"))
        offset_header = h.get("upload-offset")
        if offset_header is None:
            raise errors.InvalidHeader("PATCH needs Upload-Offset")
        client_offset = tus.parse_non_negative("Upload-Offset", offset_header)
        declared_length = None
        if "upload-length" in h:
            declared_length = tus.parse_non_negative("Upload-Length", h["upload-length"])
        checksum = tus.parse_upload_checksum(h.get("upload-checksum"))
        content_length = tus.parse_content_length(h)
        self.admission.check_append_size(content_length)
        upload_id = request.path_params["upload_id"]

        info = await self._load(upload_id)
        if info.is_final:
            raise errors.Forbidden("a final concatenated upload cannot be patched")
        if info.is_complete and client_offset == info.offset and not content_length:
            return Response(status_code=204, headers={**self._upload_headers(info), "Upload-Offset": str(info.offset)})
        async with await self._lock(upload_id) as lock:
            info = await self._load(upload_id)
            if client_offset != info.offset:
                mismatch = errors.OffsetMismatch(f"Upload-Offset is {client_offset} but the upload has {info.offset} "
                                                 "bytes; resume from there",
                                                 headers={"Upload-Offset": str(info.offset)})
                if content_length or _chunked(h):  # refused before its first byte: not read to its end (tus/linger.py)
                    return refuse_unread(request, mismatch, {"Tus-Resumable": tus.TUS_VERSION})
                raise mismatch
            if declared_length is not None:
                info = await self._declare_length(info, declared_length)
            if info.length is None:
                await asyncio.to_thread(self.admission.check_unsized_body, content_length, _chunked(h))
            limit = info.length if info.length is not None else self.settings.max_size
            if content_length is not None and info.offset + content_length > limit:
                what = "its Upload-Length" if info.length is not None else "this server's limit (Tus-Max-Size)"
                raise errors.TooLarge(f"this request would take the upload to {info.offset + content_length} bytes, "
                                      f"past {what} of {limit}")
            outcome = await self._write_body(request, info, lock, checksum)
        headers = {**self._upload_headers(outcome), "Upload-Offset": str(outcome.offset)}
        return Response(status_code=204, headers=headers)

    async def _declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        if info.length is not None:
            if info.length != length:
                raise errors.InvalidHeader(f"Upload-Length is already {info.length}; it cannot change")
            return info
        if length > self.settings.max_size:
            raise errors.TooLarge(f"Upload-Length {length} is above this server's limit of {self.settings.max_size}")
        if length < info.offset:
            raise errors.InvalidHeader(f"Upload-Length {length} is less than the {info.offset} bytes already received")
        await asyncio.to_thread(self.admission.check_space, length - info.offset)
        return await asyncio.to_thread(self.store.declare_length, info, length)  # type: ignore[no-any-return]

    async def _write_body(self, request: Request, info: UploadInfo, lock: UploadLock,
                          checksum: tus.Checksum | None = None) -> UploadInfo:
        """Stores the body, answers with the durable offset; raises the error that stopped it, if any."""
        if lock.release_requested:
            # asked to let go between taking the lock and now: the newcomer gets the upload before a byte is read
            stopped = stopped_error(errors.InternalError, "another request asked for this upload")
            stopped.headers.setdefault("Upload-Offset", str(info.offset))
            raise stopped
        interruption = self._take_over(info.id, lock)  # no await since the check above: nothing is lost
        try:
            # with Upload-Checksum the store keeps the request's bytes provisional (rolled back after a crash)
            # until they are verified
            writer = await asyncio.to_thread(self.store.open_writer, info, self.settings.sync_interval,
                                             self.hash_pool, checksum is not None)
        except BaseException:
            self._let_go(info.id, interruption)
            raise
        # a deferred length is bounded by Tus-Max-Size until the client declares it
        limit = info.length if info.length is not None else self.settings.max_size
        limits = BodyLimits(start=info.offset, length=limit, check_magic=not info.is_partial,
                            idle_timeout=self.settings.idle_timeout,
                            checksum=(checksum.algorithm, checksum.digest) if checksum else None,
                            direct_io=self.settings.direct_io)
        try:
            result = await self._receive(request, writer, limits, interruption)
        finally:
            await asyncio.to_thread(writer.close)
            self._let_go(info.id, interruption)
        info = dataclasses.replace(info, offset=result.offset, last_write_at=time.time())
        self._log_progress(info, limits.start)
        if info.is_complete:
            await self._completed(info)
        if result.error is not None:
            if isinstance(result.error, errors.NotGGUF):
                await asyncio.to_thread(self.store.mark_failed, info, result.error.message)
            result.error.headers.setdefault("Upload-Offset", str(result.offset))
            if result.disconnected or interruption.reason:
                log.info("upload=%s stopped at %d: %s", info.id, result.offset, result.error.message)
            raise result.error
        return info

    def _take_over(self, upload_id: str, lock: UploadLock) -> Interruption:
        """This request now writes the upload: an older one still reading a body is told to stop, and the
        lock's release callback (a newer request asking) interrupts this one."""
        interruption = Interruption()
        self.records.drop(upload_id)  # inotify would too, but this process's own writes need no round trip
        previous = self.active.get(upload_id)
        if previous is not None:
            previous.interrupt("a newer request took over this upload")
        self.active[upload_id] = interruption
        relay = lock.on_release_requested
        assert isinstance(relay, _ReleaseRelay)
        relay.interruption = interruption
        return interruption

    def _let_go(self, upload_id: str, interruption: Interruption) -> None:
        if self.active.get(upload_id) is interruption:
            del self.active[upload_id]
        self.records.drop(upload_id)

    async def _receive(self, request: Request, writer: UploadWriter, limits: BodyLimits,
                       interruption: Interruption) -> BodyResult:
        """The body, off the socket when the server lends it and it is large (spliced), else through ASGI."""
        socket_body = request.scope.get("extensions", {}).get(SOCKET_BODY)
        taken = None
        if (socket_body is not None and limits.checksum is None and self.socket_bodies < SOCKET_THREADS
                and (tus.parse_content_length(request.headers) or 0) >= SPLICE_FROM):
            taken = socket_body.take()
        if taken is None:
            result = await receive_body(request.stream(), writer, limits, interruption, self._run)
        else:
            direct_io = limits.direct_io and self.socket_bodies < direct.BUSY_BODIES
            self.socket_bodies += 1
            try:
                result = await receive_from_socket(socket_body, taken, writer,
                                                   dataclasses.replace(limits, direct_io=direct_io),
                                                   interruption, self.socket_pool)
            finally:
                self.socket_bodies -= 1
            self.metrics.bytes_spliced.inc(max(0, result.received))
            if result.direct:
                self.metrics.bytes_direct.inc(max(0, result.received))
        self.metrics.bytes_received.inc(max(0, result.received))
        return result

    def _log_progress(self, info: UploadInfo, start: int) -> None:
        if not info.length:
            return
        before, after = start * 10 // info.length, info.offset * 10 // info.length
        if after > before:
            log.info("progress upload=%s %d%% (%d of %d bytes)", info.id, after * 10, info.offset, info.length)

    async def _completed(self, info: UploadInfo) -> None:
        """The last byte is durable: hand the upload to the finalizer (partials are not models on their own)."""
        if info.is_partial:
            return
        self.metrics.uploads_finished.inc()
        log.info("completed upload=%s filename=%s length=%s", info.id, info.filename, info.length)
        if not info.is_final:  # assembling a final already marked it queued
            await asyncio.to_thread(self.store.mark_queued, info)
        try:
            await asyncio.to_thread(self.finalizer.submit, info.id)
        except Exception as exc:  # Redis down: the requeue loop submits it once Redis is back
            log.warning("upload=%s could not be queued for finalize yet: %s", info.id, exc)

    @contextlib.asynccontextmanager
    async def _holding(self, upload_ids: list[str]) -> AsyncIterator[None]:
        """The locks of several uploads, taken in one order by every request so two never wait on each other."""
        async with contextlib.AsyncExitStack() as held:
            for upload_id in sorted(upload_ids):
                await held.enter_async_context(await self._lock(upload_id))
            yield

    async def _lock(self, upload_id: str) -> UploadLock:
        # the real release callback from the moment the lock is held (tusd's order): one set later, when the
        # body starts, missed a request that came while the record was read and the headers checked, and the
        # newcomer then waited out the lock timeout into a 423
        lock = await self.locker.acquire(f"upload-{upload_id}", _ReleaseRelay())
        if lock.waited:
            self.metrics.lock_waits.inc()
        return lock

    # -- DELETE ---------------------------------------------------------------------------------

    async def delete(self, request: Request) -> Response:
        self._check_common(request)
        await self.terminate(request.path_params["upload_id"])
        return Response(status_code=204, headers={"Tus-Resumable": tus.TUS_VERSION})

    async def terminate(self, upload_id: str) -> None:
        """Terminates an unfinished upload (tus DELETE, RUFH cancellation), after asking a request still writing
        it to save and let go."""
        info = await self._load(upload_id)
        async with await self._lock(upload_id):
            info = await self._load(upload_id)
            state = await asyncio.to_thread(self.store.state, upload_id)
            if info.is_complete and not info.is_partial and not state.terminal:
                raise errors.AlreadyInstalled("this upload is complete and being installed; it can no longer be "
                                              "terminated (delete the model afterwards instead)")
            final = await asyncio.to_thread(self.store.assembling_into, info) if info.is_partial else None
            if final is not None:  # refused rather than waited for: copying a large final takes minutes
                raise errors.InUse(f"this partial upload is being concatenated into upload {final}; it is freed "
                                   "once that upload is assembled")
            await asyncio.to_thread(self.store.terminate, upload_id, "this upload was terminated by its client")
            self.records.drop(upload_id)
        self.metrics.uploads_terminated.inc()
        log.info("terminated upload=%s", upload_id)

    # -- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        """After the last request: let the body threads go (nothing is left for them to write)."""
        self.write_pool.shutdown(wait=False)
        self.hash_pool.shutdown(wait=False)
        self.socket_pool.shutdown(wait=False)
        self.records.close()

    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new requests, make running bodies save what they have and answer."""
        self.shutting_down = True
        for interruption in list(self.active.values()):
            interruption.interrupt("the server is shutting down", errors.ServiceUnavailable)


def _chunked(headers: Any) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()
