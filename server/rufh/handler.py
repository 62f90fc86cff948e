"""Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload): creation, offset retrieval, append and
cancellation on the same uploads, store, locks and finalize pipeline as tus 1.0.

The upload resource of an upload is `/uploads/<id>`, the same id as its tus URL `/files/<id>`. Uploads are
created by POST or PUT to `/uploads/`, or by a POST to the tus endpoint `/files/` that speaks RUFH (what
tus-js-client's `ietf-draft-03`/`ietf-draft-05` protocols send to the endpoint they are given).

Everything an upload is written with belongs to the tus handler and is called from here, so both protocols
store, lock, take over and finalize the one way: its lock (a newer request asks an older one still appending
to save and let go), its body receiving (`_write_body`: through ASGI or spliced off the socket, the GGUF magic
first, a request checksum with the writer's provisional mode), its offset retrieval (`snapshot`) and
cancellation (`terminate`). What is RUFH's own is here: the headers, the answers (problem details for errors,
see problems.py) and the 104 interim responses, written where the server offers them (socket_body.INTERIM).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response

from modeldrop.server import errors
from modeldrop.server.admission import read_set
from modeldrop.server.dedupe import MATCH_HEADER, Kind, Match
from modeldrop.server.socket_body import INTERIM, InterimResponses
from modeldrop.server.store.dedupe import Claim, token_fingerprint
from modeldrop.server.store.digest import ResumableSha256
from modeldrop.server.store.errors import StoreError
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.tus import headers as tus
from modeldrop.server.tus.handler import STATUS_HEADER, TusHandler

from . import headers as rufh
from . import problems

log = logging.getLogger("modeldrop.rufh")

UPLOADS_PATH = "/uploads/"
REASON_104 = "Upload Resumption Supported"
PROGRESS_EVERY = 1.0  # seconds between looks at the durable offset, for 104 progress answers
Endpoint = Callable[[Request], Awaitable[Response]]


class RufhHandler:
    def __init__(self, tus_handler: TusHandler) -> None:
        self.tus = tus_handler
        self.settings = tus_handler.settings
        self.admission = tus_handler.admission

    # -- answers --------------------------------------------------------------------------------

    def limits(self, info: UploadInfo | None = None, rev: rufh.Revision = rufh.CURRENT) -> str:
        """Upload-Limit: the largest upload, the largest request body if --max-append-size is set, and for an
        unfinished upload its remaining lifetime (it expires --expire-after seconds after its last byte)."""
        limits = {"max-size": self.settings.max_size}
        if self.settings.max_append_size is not None:
            limits["max-append-size"] = self.settings.max_append_size
        if info is not None and not info.is_complete:
            ends = max(info.last_write_at, info.created_at) + self.settings.expire_after
            limits[rev.age_key] = max(0, math.floor(ends - time.time()))
        return rufh.format_limits(limits)

    def _headers(self, rev: rufh.Revision, info: UploadInfo | None = None) -> dict[str, str]:
        headers = {"Cache-Control": "no-store", "Upload-Limit": self.limits(info, rev)}
        if rev.interop is not None:
            headers[rufh.INTEROP_HEADER] = str(rev.interop)
        if info is not None:
            headers[STATUS_HEADER] = f"/api/uploads/{info.id}"
        return headers

    def _location(self, request: Request, upload_id: str) -> str:
        return f"{self.tus._base_url(request)}{UPLOADS_PATH}{upload_id}"

    def _interim(self, request: Request, rev: rufh.Revision) -> InterimResponses | None:
        """Where 104s can be written: the client named a version this server speaks, and the server owns the
        connection (uvicorn with modeldrop's protocol; not test clients or other servers)."""
        if not rev.interim:
            return None
        sender = request.scope.get("extensions", {}).get(INTERIM)
        return sender if isinstance(sender, InterimResponses) else None

    def _check_open(self, request: Request) -> None:
        if self.tus.shutting_down:
            raise errors.ServiceUnavailable(headers={"Retry-After": "5"})
        self.admission.check_auth(request.headers)

    def answering(self, endpoint: Endpoint) -> Endpoint:
        """Errors of an RUFH request become problem details, with Upload-Complete and the interop version."""

        @functools.wraps(endpoint)
        async def answer(request: Request) -> Response:
            rev = rufh.revision(request.headers)
            try:
                return await endpoint(request)
            except (errors.HTTPError, StoreError) as raised:
                error = errors.from_store(raised) if isinstance(raised, StoreError) else raised
                extra = {"Cache-Control": "no-store"}
                if rev.interop is not None:
                    extra[rufh.INTEROP_HEADER] = str(rev.interop)
                if request.method != "HEAD" and rev.complete_header not in error.headers:
                    # a body that is not GGUF, or an upload already complete, will never take more bytes
                    done = isinstance(error, errors.NotGGUF | problems.CompletedUpload)
                    extra[rev.complete_header] = rev.complete_value(done)
                if error.status == 413:
                    # a refusal for a limit carries every limit of its upload resource, its lifetime included
                    extra["Upload-Limit"] = self.limits(await self._info_or_none(request), rev)
                if error.status >= 500 and not isinstance(error, errors.ServiceUnavailable):
                    log.info("%s %s answered %d: %s", request.method, request.url.path, error.status, error.message)
                return problems.response(error, request.method, extra)
        return answer

    async def _info_or_none(self, request: Request) -> UploadInfo | None:
        """The upload a request to an upload resource names, for its limits; None for a creation or one not found."""
        upload_id = request.path_params.get("upload_id")
        if upload_id is None:
            return None
        try:
            return await self.tus._load(upload_id)
        except (errors.HTTPError, StoreError):
            return None

    # -- OPTIONS --------------------------------------------------------------------------------

    async def options(self, request: Request) -> Response:
        """Upload-Limit for a client that checks before creating an upload (the draft's MUST)."""
        return Response(status_code=204, headers={"Upload-Limit": self.limits()})

    # -- creation: POST or PUT /uploads/, or an RUFH POST to /files/ ----------------------------------

    async def create(self, request: Request) -> Response:
        rev = rufh.revision(request.headers)
        self._check_open(request)
        h = request.headers
        said = rufh.completeness(h, rev)
        # without Upload-Complete it is a plain upload: the whole file in this one request, resumable or not
        complete = True if said is None else said
        content_length = tus.parse_content_length(h)
        chunked = "chunked" in h.get("transfer-encoding", "").lower()
        has_body = bool(content_length) or chunked
        length = self._length(h, complete, content_length, offset=0, known=None)
        self.admission.check_append_size(content_length)
        if length == 0 or (complete and not has_body and length is None):
            raise errors.NotGGUF("an empty file is not a GGUF model")
        metadata = tus.parse_metadata(h.get("upload-metadata"), self.settings.max_metadata)
        name = rufh.disposition_filename(h.get("content-disposition")) or metadata.get("filename")
        if not name:
            raise errors.InvalidFilename("name the model: send Content-Disposition: attachment; "
                                         "filename=\"NAME.gguf\" (or tus Upload-Metadata with a filename)")
        filename = tus.validate_filename(name)
        place = read_set(metadata, filename)  # tus metadata `set`/`set_size`: a file of a model set
        sha256 = rufh.representation_sha256(h.get("repr-digest"))
        from_metadata = tus.validate_sha256(metadata.get("sha256"))
        if sha256 and from_metadata and sha256 != from_metadata:
            raise errors.InvalidHeader("Repr-Digest and the sha256 metadata name different digests")
        sha256 = sha256 or from_metadata
        checksum = rufh.content_checksum(h.get("content-digest"))
        token_fp = token_fingerprint(self.settings.token, h)
        dedupe = self.tus.dedupe
        if dedupe is not None and sha256 and length and place is None:
            claim = Claim(filename, length, sha256, token_fp, h.get("upload-metadata", ""))
            match = await asyncio.to_thread(dedupe.match, claim)  # resumed, linked or installed already
            if match is not None:
                return await self._matched(request, rev, match, complete, checksum, content_length)
        await asyncio.to_thread(self.admission.check_name_free, filename, place)

        named = place if place is not None and place.named else None
        info = UploadInfo(id=self.tus.store.new_id(), length=length, metadata_header=h.get("upload-metadata", ""),
                          filename=filename, sha256_expected=sha256, created_at=time.time(), token_fp=token_fp,
                          set_name=named.set if named else None, set_size=named.size if named else None)
        if has_body and length is None:
            await asyncio.to_thread(self.admission.check_unsized_body, content_length, chunked)
        info = await asyncio.to_thread(self.admission.admit, length, functools.partial(self.tus.store.create, info))
        self.tus.metrics.uploads_created.inc()
        location = self._location(request, info.id)
        log.info("created upload=%s filename=%s length=%s (RUFH, interop %s)", info.id, filename, length,
                 rev.interop or "none")
        interim = self._interim(request, rev) if said is not None else None
        if interim is not None:
            interim.send(104, REASON_104, [("Location", location), ("Upload-Limit", self.limits(info, rev)),
                                           (rufh.INTEROP_HEADER, str(rev.interop))])
        if has_body:
            try:
                info = await self._append(request, rev, info.id, 0, complete, checksum, content_length)
            except errors.HTTPError as error:
                error.headers.setdefault("Location", location)  # the client resumes there
                raise
        return self._appended(rev, info, 201, {"Location": location}, h)

    async def _matched(self, request: Request, rev: rufh.Revision, match: Match, complete: bool,
                       checksum: tus.Checksum | None, content_length: int | None) -> Response:
        """A creation of a file the server has (server/dedupe.py): 201 naming the upload it has, at its durable
        offset, with Modeldrop-Match saying why. The body is stored only at byte 0 of a resumed upload that has
        none yet; otherwise it is not read (the connection closes after the answer) and the client resumes."""
        info = match.info
        if match.kind is Kind.RESUMED and not info.is_complete:
            info = await self.tus.snapshot(info.id)  # durable: a request still writing it is asked to let go
            if content_length and info.offset == 0:
                info = await self._append(request, rev, info.id, 0, complete, checksum, content_length)
        location = self._location(request, info.id)
        headers = {**self._headers(rev, info), "Location": location, "Upload-Offset": str(info.offset),
                   rev.complete_header: rev.complete_value(info.is_complete), MATCH_HEADER: match.kind.value}
        if info.length is not None:
            headers["Upload-Length"] = str(info.length)
        body = {**match.body(), "offset": info.offset, "status": f"/api/uploads/{info.id}"}
        return Response(json.dumps(body), status_code=201, headers=headers, media_type="application/json")

    def _length(self, h: Mapping[str, str], complete: bool, content_length: int | None, offset: int,
                known: int | None) -> int | None:
        """The upload's length from this request's indicators (Upload-Length; Content-Length with Upload-Complete
        true), checked against each other and against the length already recorded (InconsistentLength)."""
        declared = rufh.parse_integer(h.get("upload-length"))
        implied = offset + content_length if complete and content_length is not None else None
        values = {value for value in (declared, implied, known) if value is not None}
        if len(values) > 1:
            shown = ", ".join(f"{what} {value}" for what, value in (("Upload-Length", declared),
                              ("this request's end", implied), ("the upload's length", known)) if value is not None)
            raise problems.InconsistentLength(f"the lengths do not agree: {shown}")
        length = values.pop() if values else None
        if length is not None and length > self.settings.max_size:
            raise errors.TooLarge(f"the upload is {length} bytes; this server accepts at most {self.settings.max_size}")
        if length is not None and content_length is not None and offset + content_length > length:
            raise problems.InconsistentLength(f"this request would take the upload to {offset + content_length} "
                                              f"bytes, past its length of {length}")
        return length

    # -- append: PATCH /uploads/<id> ------------------------------------------------------------

    async def append(self, request: Request) -> Response:
        rev = rufh.revision(request.headers)
        self._check_open(request)
        h = request.headers
        media_type = h.get("content-type", "").split(";")[0].strip().lower()
        if rev.partial_upload_type and media_type != rufh.PARTIAL_UPLOAD_TYPE:
            raise errors.UnsupportedMediaType(f"an append needs Content-Type: {rufh.PARTIAL_UPLOAD_TYPE}, not "
                                              f"{h.get('content-type')!r}")
        offset = rufh.parse_integer(h.get("upload-offset"))
        if offset is None:
            raise errors.InvalidHeader("an append needs Upload-Offset (a non-negative integer)")
        said = rufh.completeness(h, rev)
        # -01 says Upload-Incomplete only while more is to come; later drafts require Upload-Complete, but an empty
        # request without it (tus-js-client's, once its source is done) only asks where the upload is
        complete = rev.inverted if said is None else said
        content_length = tus.parse_content_length(h)
        self.admission.check_append_size(content_length)
        checksum = rufh.content_checksum(h.get("content-digest"))
        upload_id = request.path_params["upload_id"]
        info = await self.tus._load(upload_id)
        if info.is_final or info.is_partial:
            raise errors.Forbidden("a tus concatenation upload cannot be appended to through RUFH")
        if info.is_complete:
            return self._to_completed(rev, info, offset, content_length)
        info = await self._append(request, rev, upload_id, offset, complete, checksum, content_length)
        return self._appended(rev, info, 200 if info.is_complete else rev.append_status, {}, h)

    def _to_completed(self, rev: rufh.Revision, info: UploadInfo, offset: int, content_length: int | None) -> Response:
        """An append to a complete upload: a retry of the last one (nothing more to send, the right offset) gets
        the completion's answer again; anything more is refused: from -12 as lengths that disagree (the upload's
        and this request's end), said with Upload-Complete false; before, as the completed-upload problem."""
        if offset != info.offset:
            raise self._mismatch(rev, info, offset)
        if content_length:
            message = f"this upload is complete at {info.offset} bytes and takes no more"
            if rev.complete_names_origin:
                raise problems.InconsistentLength(message, headers={"Upload-Offset": str(info.offset),
                                                                    rev.complete_header: rev.complete_value(False)})
            raise problems.CompletedUpload(message, headers={"Upload-Offset": str(info.offset)})
        return self._appended(rev, info, 200, {}, {})

    def _mismatch(self, rev: rufh.Revision, info: UploadInfo, offset: int) -> problems.MismatchingOffset:
        # from -12 a 409 says Upload-Complete false whatever the upload's state: the protocol answers, not the target
        complete = info.is_complete and not rev.complete_names_origin
        return problems.MismatchingOffset(
            f"Upload-Offset is {offset} but the upload has {info.offset} bytes; resume from there",
            headers={"Upload-Offset": str(info.offset), rev.complete_header: rev.complete_value(complete)},
            members={"expected-offset": info.offset, "provided-offset": offset})

    async def _append(self, request: Request, rev: rufh.Revision, upload_id: str, offset: int, complete: bool,
                      checksum: tus.Checksum | None, content_length: int | None) -> UploadInfo:
        """Under the upload's lock (asking a request still appending to let go): the offset and length checks,
        the body through the tus handler's _write_body, then the completion."""
        async with await self.tus._lock(upload_id) as lock:
            info = await self.tus._load(upload_id)
            if offset != info.offset:
                raise self._mismatch(rev, info, offset)
            length = self._length(request.headers, complete, content_length, offset, info.length)
            if length is not None and info.length is None:
                info = await self.tus._declare_length(info, length)
            if info.length is None:
                chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
                await asyncio.to_thread(self.admission.check_unsized_body, content_length, chunked)
            if content_length or content_length is None:
                progress = self._progress(request, rev, info) if checksum is None else None
                try:
                    info = await self.tus._write_body(request, info, lock, checksum)
                finally:
                    if progress is not None:
                        progress.cancel()
            if complete and not info.is_complete:
                info = await self._complete(info)
        return info

    async def _complete(self, info: UploadInfo) -> UploadInfo:
        """Upload-Complete: true, and the whole request arrived: the upload ends at its offset."""
        if info.length is not None:
            raise problems.InconsistentLength(f"Upload-Complete is true but the upload has {info.offset} of its "
                                              f"{info.length} bytes", headers={"Upload-Offset": str(info.offset)})
        if info.offset == 0:
            raise errors.NotGGUF("an empty file is not a GGUF model")
        info = await self.tus._declare_length(info, info.offset)
        await self.tus._completed(info)
        return info

    def _progress(self, request: Request, rev: rufh.Revision, info: UploadInfo) -> asyncio.Task[None] | None:
        """104 answers with the durable offset while a body arrives: every sync (--sync-interval) makes the bytes
        before it durable, and the store keeps that offset with the upload's running hash."""
        interim = self._interim(request, rev)
        if interim is None:
            return None
        store, upload_id, start = self.tus.store, info.id, info.offset

        async def report() -> None:
            last = start
            while True:
                await asyncio.sleep(PROGRESS_EVERY)
                running = store.running_hashes.get(upload_id)
                if running is not None and running[0] > last:
                    last = running[0]
                    if not interim.send(104, REASON_104, [("Upload-Offset", str(last)),
                                                          (rufh.INTEROP_HEADER, str(rev.interop))]):
                        return

        return asyncio.get_running_loop().create_task(report())

    def _appended(self, rev: rufh.Revision, info: UploadInfo, status: int, extra: Mapping[str, str],
                  request_headers: Mapping[str, str]) -> Response:
        """The answer to a creation or append: where the upload is and, once complete, where its status is.

        Once complete, the file's sha-256 is known from the hash kept while its bytes arrived (when this process
        kept it to the end): a Repr-Digest given at creation that names another is answered as the failure it is
        at once, and Want-Repr-Digest gets the digest. The finalizer checks the file again either way."""
        headers = {**self._headers(rev, info), **extra, "Upload-Offset": str(info.offset),
                   rev.complete_header: rev.complete_value(info.is_complete)}
        if info.length is not None:
            headers["Upload-Length"] = str(info.length)
        if not info.is_complete:
            return Response(status_code=status, headers=headers)
        state = self.tus.store.running_hash(info.id, info.offset)
        if state is not None:
            file_sha256 = ResumableSha256(state).hexdigest()
            if info.sha256_expected and info.sha256_expected != file_sha256:
                raise problems.ReprDigestMismatch(
                    f"the uploaded file's sha-256 is {file_sha256} but Repr-Digest named {info.sha256_expected}: "
                    f"the upload failed and will not be installed (status: /api/uploads/{info.id})", headers=headers)
            if rufh.wants_sha256(request_headers.get("want-repr-digest")):
                headers["Repr-Digest"] = rufh.repr_digest_field(file_sha256)
        body = {"id": info.id, "filename": info.filename, "state": "queued", "status": f"/api/uploads/{info.id}"}
        return Response(json.dumps(body), status_code=status, headers=headers, media_type="application/json")

    # -- offset retrieval: HEAD (or GET) /uploads/<id> ------------------------------------------

    async def head(self, request: Request) -> Response:
        rev = rufh.revision(request.headers)
        self._check_open(request)
        info = await self.tus.snapshot(request.path_params["upload_id"])
        if info.is_final or info.is_partial:
            raise errors.Forbidden("a tus concatenation upload has no RUFH upload resource")
        headers = {**self._headers(rev, info), "Upload-Offset": str(info.offset),
                   rev.complete_header: rev.complete_value(info.is_complete)}
        if info.length is not None:
            headers["Upload-Length"] = str(info.length)
        return Response(status_code=204, headers=headers)

    # -- cancellation: DELETE /uploads/<id> -----------------------------------------------------

    async def delete(self, request: Request) -> Response:
        rev = rufh.revision(request.headers)
        self._check_open(request)
        await self.tus.terminate(request.path_params["upload_id"])
        return Response(status_code=204, headers=self._headers(rev))


class Dispatch:
    """The tus endpoint `/files/` for both protocols: a POST that speaks RUFH creates an RUFH upload, anything
    else is tus; OPTIONS answers tus's discovery plus RUFH's Upload-Limit."""

    def __init__(self, tus_handler: TusHandler, rufh_handler: RufhHandler) -> None:
        self.tus = tus_handler
        self.rufh = rufh_handler
        self.create = rufh_handler.answering(rufh_handler.create)

    async def post(self, request: Request) -> Response:
        if rufh.is_rufh_request(request.headers):
            return await self.create(request)
        return await self.tus.post(request)

    async def options(self, request: Request) -> Response:
        response = await self.tus.options(request)
        response.headers["Upload-Limit"] = self.rufh.limits()
        return response


def routes(handler: RufhHandler) -> list[tuple[str, Endpoint, list[str]]]:
    """(path, endpoint, methods) of the upload resources and their creation, each answering errors as problems."""
    wrap = handler.answering
    create, head, append, delete = wrap(handler.create), wrap(handler.head), wrap(handler.append), wrap(handler.delete)
    resource = UPLOADS_PATH + "{upload_id}"
    return [
        (UPLOADS_PATH.rstrip("/"), create, ["POST", "PUT"]),
        (UPLOADS_PATH, create, ["POST", "PUT"]),
        (UPLOADS_PATH, handler.options, ["OPTIONS"]),
        (resource, head, ["HEAD", "GET"]),
        (resource, append, ["PATCH"]),
        (resource, delete, ["DELETE"]),
        (resource, handler.options, ["OPTIONS"]),
    ]
