"""RFC 9457 problem details: how the RUFH front end answers an error.

The draft's problem types are errors of their own (MismatchingOffset, InconsistentLength; CompletedUpload, which
-12 removed, for the older interop versions only), raised like any other errors.HTTPError; every other refusal
(401, 404, 413, 423, 507...) is answered as `about:blank` with the HTTP status's title. Each body also carries
modeldrop's stable `error` code, as the rest of the API does, and `detail` says what happened and what to do.
"""

from __future__ import annotations

import http
import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from modeldrop.server import errors

MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
# tus's 460 is not an HTTP status other clients know: a Content-Digest that does not match is a bad request
STATUS_FOR_RUFH = {errors.ChecksumMismatch.status: 400}
# RFC 9110's names where Python's http.HTTPStatus still has RFC 7231's
PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


class Problem(errors.HTTPError):
    """An error with one of the draft's problem types; `members` are its extension members."""

    problem_type = "about:blank"
    title = ""

    def __init__(self, message: str | None = None, headers: Mapping[str, str] | None = None,
                 members: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, headers)
        self.members = dict(members or {})


class MismatchingOffset(Problem):
    status = 409
    code = "offset_mismatch"
    problem_type = PROBLEM_TYPES + "mismatching-upload-offset"
    title = "Mismatching Upload Offset"
    default_message = "Upload-Offset does not match the upload's offset; resume from the offset this answer gives"


class CompletedUpload(Problem):
    status = 400
    code = "completed_upload"
    problem_type = PROBLEM_TYPES + "completed-upload"
    title = "Upload Is Completed"
    default_message = "this upload is already complete; it takes no more bytes"


class InconsistentLength(Problem):
    status = 400
    code = "inconsistent_upload_length"
    problem_type = PROBLEM_TYPES + "inconsistent-upload-length"
    title = "Inconsistent Upload Length Values"
    default_message = "the request's length values do not agree with each other or with the upload's"


class ReprDigestMismatch(Problem):
    status = 400
    code = "repr_digest_mismatch"
    title = "Bad Request"
    default_message = "the uploaded file's sha-256 is not the one Repr-Digest named: the upload failed"


def body(error: errors.HTTPError) -> dict[str, Any]:
    """The problem details document of an error."""
    status = STATUS_FOR_RUFH.get(error.status, error.status)
    if isinstance(error, Problem):
        document: dict[str, Any] = {"type": error.problem_type, "title": error.title}
    else:
        try:
            phrase = PHRASES.get(status) or http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        document = {"type": "about:blank", "title": phrase}
    document.update(status=status, detail=error.message, error=error.code)
    if isinstance(error, Problem):
        document.update(error.members)
    return document


def response(error: errors.HTTPError, method: str, headers: Mapping[str, str]) -> Response:
    """The answer to an error: problem details (no body for HEAD), the error's headers and `headers`."""
    document = body(error)
    merged = {**error.headers, **headers}
    if method == "HEAD":
        return Response(status_code=document["status"], headers=merged)
    return Response(json.dumps(document), status_code=document["status"], headers=merged, media_type=MEDIA_TYPE)
