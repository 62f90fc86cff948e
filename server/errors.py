"""Errors that become HTTP responses: each carries a status, a stable code and a message for people.

Raise a fresh instance of a subclass (never a shared one); tests assert `code`, not message text.
"""

from __future__ import annotations

from collections.abc import Mapping

from modeldrop.server.store import errors as store


class HTTPError(Exception):
    status = 500
    code = "internal_error"
    default_message = "the server failed; the upload's bytes are safe, try again"

    def __init__(self, message: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = dict(headers or {})
        super().__init__(self.message)


def _error(name: str, status: int, code: str, default_message: str) -> type[HTTPError]:
    return type(name, (HTTPError,), {"status": status, "code": code, "default_message": default_message})


BadRequest = _error("BadRequest", 400, "bad_request", "the request is malformed")
InvalidHeader = _error("InvalidHeader", 400, "invalid_header", "a header has an invalid value")
InvalidMetadata = _error("InvalidMetadata", 400, "invalid_metadata", "Upload-Metadata is malformed")
InvalidFilename = _error("InvalidFilename", 400, "invalid_filename", "the filename is not allowed")
InvalidSet = _error("InvalidSet", 400, "invalid_set", "the `set` and `set_size` metadata do not make a model set")
NotGGUF = _error("NotGGUF", 400, "not_gguf", "the file does not start with the GGUF magic: it is not a GGUF model")
Unauthorized = _error("Unauthorized", 401, "unauthorized", "a valid bearer token is required")
Forbidden = _error("Forbidden", 403, "forbidden", "this operation is not allowed on this upload")
CrossOrigin = _error("CrossOrigin", 403, "cross_origin",
                     "requests from another web site are not accepted by this server")
NotFound = _error("NotFound", 404, "not_found", "no such upload")
OffsetMismatch = _error("OffsetMismatch", 409, "offset_mismatch", "Upload-Offset does not match the upload's offset")
AlreadyInstalled = _error("AlreadyInstalled", 409, "already_installed", "a model with this name is already installed")
InUse = _error("InUse", 409, "in_use", "this upload is being used by another upload")
RequestTimeout = _error("RequestTimeout", 408, "request_timeout",
                        "the request's headers did not arrive in time; the connection is closed")
Gone = _error("Gone", 410, "gone", "this upload expired or was terminated")
LengthRequired = _error("LengthRequired", 411, "length_required", "this request needs Content-Length")
TooLarge = _error("TooLarge", 413, "too_large", "the upload is larger than allowed")
PreconditionFailed = _error("PreconditionFailed", 412, "unsupported_version", "unsupported tus version")
UnsupportedMediaType = _error("UnsupportedMediaType", 415, "unsupported_media_type",
                              "PATCH needs Content-Type: application/offset+octet-stream")
MisdirectedHost = _error("MisdirectedHost", 421, "unknown_host",
                         "this server does not answer to this host name")
Locked = _error("Locked", 423, "locked", "another request is writing this upload; retry shortly")
TooManyUploads = _error("TooManyUploads", 429, "too_many_uploads", "too many unfinished uploads; retry later")
HeadersTooLarge = _error("HeadersTooLarge", 431, "headers_too_large",
                         "the request's headers are too large; the connection is closed")
ChecksumMismatch = _error("ChecksumMismatch", 460, "checksum_mismatch",
                          "Upload-Checksum does not match the bytes received; they were discarded")
InternalError = _error("InternalError", 500, "internal_error", HTTPError.default_message)
ReadTimeout = _error("ReadTimeout", 500, "read_timeout", "the client sent nothing for too long; bytes so far kept")
ServiceUnavailable = _error("ServiceUnavailable", 503, "unavailable", "the server is shutting down; retry shortly")
InsufficientStorage = _error("InsufficientStorage", 507, "insufficient_storage", "not enough free disk space")


# The store's refusals as HTTP answers, in one place (tusd: the handler maps its store's errors); the
# message is the store's own, written for the person uploading.
STORE_ERRORS: dict[type[store.StoreError], type[HTTPError]] = {
    store.UploadNotFound: NotFound,
    store.UploadGone: Gone,
    store.UploadInUse: InUse,
    store.PartsNotReady: InvalidHeader,
    store.NotGGUF: NotGGUF,
    store.PlantedLinkRefused: Forbidden,
    store.StorageFull: InsufficientStorage,
    store.StorageFailed: InternalError,
}


def from_store(exc: store.StoreError) -> HTTPError:
    """The HTTP answer to a store error: its status and code from STORE_ERRORS, its message from the store."""
    for kind in type(exc).__mro__:
        answer = STORE_ERRORS.get(kind)  # type: ignore[call-overload]
        if answer is not None:
            return answer(exc.message)
    return InternalError(exc.message)
