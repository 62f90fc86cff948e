"""Pure parsers for the header fields of Resumable Uploads for HTTP (RUFH): strings in, values out. No I/O.

Upload-Complete, Upload-Offset and Upload-Length are Structured Field Items (RFC 9651): a value that is not of
the field's type makes the whole field be ignored (the draft's rule), so these parsers answer None for it and
the handler decides whether a missing field is an error. Upload-Limit is a Dictionary this server writes.
Repr-Digest and Content-Digest (RFC 9530) are Dictionaries of byte sequences; Content-Disposition (RFC 6266)
names the file. Errors are errors.* raised with a message for the person uploading.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import urllib.parse
from collections.abc import Mapping

from modeldrop.server import errors
from modeldrop.server.tus import headers as tus

PARTIAL_UPLOAD_TYPE = "application/partial-upload"
INTEROP_HEADER = "Upload-Draft-Interop-Version"
_SF_INTEGER = re.compile(r"^-?[0-9]{1,15}$")
_DICT_KEY = re.compile(r"^[a-z*][a-z0-9_\-.*]*$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 9530's algorithms this server can check, by the hashlib name the body reader uses: a request's digest
# (Content-Digest) is computed as its bytes arrive; the whole file's (Repr-Digest) is the upload's running
# sha256, checked before the model is installed
CONTENT_DIGESTS = {"sha-256": "sha256", "sha-512": "sha512"}
REPR_DIGEST = "sha-256"


@dataclasses.dataclass(frozen=True)
class Revision:
    """One revision of the draft as a client speaks it, named by its Upload-Draft-Interop-Version."""

    interop: int | None          # None: the client sent no interop version (the RFC to come, or a plain client)
    drafts: str                  # the draft revisions with this interop version
    inverted: bool = False       # -01: Upload-Incomplete (true while incomplete) instead of Upload-Complete
    partial_upload_type: bool = True   # appends must be application/partial-upload (from -04)
    age_key: str = "max-age"     # the Upload-Limit key of an upload's remaining lifetime (-04/-05: expires)
    append_status: int = 204     # an append that leaves the upload incomplete (-01: 201)
    interim: bool = True         # 104 may be sent: the client named an interop version this server speaks
    # -12 on: Upload-Complete in a response says whether the targeted resource produced it, so the protocol's own
    # refusals (a mismatching offset, bytes for a complete upload) say false, and the completed-upload problem type
    # is gone (more bytes than the length an upload completed at are an inconsistent length). Earlier revisions keep
    # the answers their clients were written against.
    complete_names_origin: bool = False

    @property
    def complete_header(self) -> str:
        return "Upload-Incomplete" if self.inverted else "Upload-Complete"

    def complete_value(self, complete: bool) -> str:
        """The completeness header's value for `complete` (`?1`/`?0`, inverted for -01)."""
        return "?1" if complete != self.inverted else "?0"


# Served: what real clients send. tus-js-client `protocol: 'ietf-draft-03'` sends 5, 'ietf-draft-05' sends 6;
# Apple's URLSession sends 3 (iOS 17), 5 (iOS 18.0), 6 (iOS 18.1 on) and 8 (seen from iOS 26.2); 9 is the
# draft's current interop version (bumped for -12; no later bump was found up to -15).
REVISIONS: dict[int, Revision] = {
    3: Revision(3, "-01", inverted=True, partial_upload_type=False, age_key="expires", append_status=201),
    5: Revision(5, "-03", partial_upload_type=False, age_key="expires"),
    6: Revision(6, "-04, -05", age_key="expires"),
    8: Revision(8, "-09 to -11"),
    9: Revision(9, "-12 to -15", complete_names_origin=True),
}
CURRENT = REVISIONS[9]
# a request without an interop version, or with one this server does not speak: the current revision's rules,
# without 104 (the draft forbids sending it on a missing or mismatching interop version)
UNNAMED = dataclasses.replace(CURRENT, interop=None, drafts="none named", interim=False)


def revision(headers: Mapping[str, str]) -> Revision:
    value = headers.get(INTEROP_HEADER.lower())
    number = parse_integer(value) if value is not None else None
    return REVISIONS.get(number, UNNAMED) if number is not None else UNNAMED


def is_rufh_request(headers: Mapping[str, str]) -> bool:
    """Whether a request to the tus endpoint speaks RUFH instead: it names an interop version, or says whether it
    completes an upload, and does not say Tus-Resumable."""
    if "tus-resumable" in headers:
        return False
    return any(name in headers for name in ("upload-draft-interop-version", "upload-complete", "upload-incomplete"))


def _item(value: str) -> str:
    """The bare item of a Structured Field Item: parameters (`;key=value`) dropped, white space trimmed."""
    return value.split(";", 1)[0].strip(" \t")


def parse_boolean(value: str | None) -> bool | None:
    """`?1` / `?0`; None when absent or not a Boolean (then the field is ignored)."""
    if value is None:
        return None
    bare = _item(value)
    return {"?1": True, "?0": False}.get(bare)


def parse_integer(value: str | None) -> int | None:
    """A non-negative sf-integer (at most 15 digits); None when absent, negative or not an Integer."""
    if value is None:
        return None
    bare = _item(value)
    if not _SF_INTEGER.match(bare) or bare.startswith("-"):
        return None
    return int(bare)


def completeness(headers: Mapping[str, str], rev: Revision) -> bool | None:
    """Whether the request says it completes the upload; None when it does not say (or says it unreadably)."""
    if rev.inverted:
        incomplete = parse_boolean(headers.get("upload-incomplete"))
        return None if incomplete is None else not incomplete
    return parse_boolean(headers.get("upload-complete"))


def format_limits(limits: Mapping[str, int]) -> str:
    """Upload-Limit: a Dictionary of Integers, `min-size=0` when there is no limit at all (the draft's rule)."""
    if not limits:
        return "min-size=0"
    return ", ".join(f"{key}={int(value)}" for key, value in limits.items())


def parse_limits(value: str) -> dict[str, int]:
    """Upload-Limit as a client reads it: members whose value is not an Integer make it invalid (ValueError);
    used by the tests and by anyone reading what this server announces."""
    limits = {}
    for member in value.split(","):
        key, _, raw = member.strip().partition("=")
        number = parse_integer(raw) if raw else None
        if not _DICT_KEY.match(key) or number is None:
            raise ValueError(f"Upload-Limit member {member.strip()[:40]!r} is not key=integer")
        limits[key] = number
    return limits


def parse_digests(name: str, value: str | None) -> dict[str, bytes]:
    """Repr-Digest / Content-Digest (RFC 9530): `sha-256=:<base64>:, sha-512=:...:` as {algorithm: digest}."""
    if value is None or not value.strip():
        return {}
    digests: dict[str, bytes] = {}
    for member in value.split(","):
        key, equals, raw = member.strip().partition("=")
        key = key.strip()
        raw = _item(raw)
        if not equals or not _DICT_KEY.match(key) or len(raw) < 2 or raw[0] != ":" or raw[-1] != ":":
            raise errors.InvalidHeader(f"{name} must be a dictionary like sha-256=:<base64>:, not {value[:80]!r}")
        try:
            digests[key] = base64.b64decode(raw[1:-1], validate=True)
        except (binascii.Error, ValueError):
            raise errors.InvalidHeader(f"{name}'s {key} value is not valid base64") from None
    return digests


def content_checksum(value: str | None) -> tus.Checksum | None:
    """Content-Digest as the checksum the body reader checks (tus's Upload-Checksum): the strongest algorithm
    given that this server computes; refused when it names none of them, or a digest of the wrong size."""
    digests = parse_digests("Content-Digest", value)
    if not digests:
        return None
    for algorithm in ("sha-512", "sha-256"):
        if algorithm in digests:
            checksum = tus.Checksum(CONTENT_DIGESTS[algorithm], digests[algorithm])
            expected = 64 if algorithm == "sha-512" else 32
            if len(checksum.digest) != expected:
                raise errors.InvalidHeader(f"Content-Digest's {algorithm} must be {expected} bytes, "
                                           f"not {len(checksum.digest)}")
            return checksum
    raise errors.InvalidHeader(f"Content-Digest names {', '.join(sorted(digests))}; this server checks "
                               f"{' and '.join(CONTENT_DIGESTS)} only")


def representation_sha256(value: str | None) -> str | None:
    """Repr-Digest's sha-256 as lowercase hex (the whole file's digest, checked before installing); refused
    when it names only algorithms this server cannot check, so a client never believes a digest was checked."""
    digests = parse_digests("Repr-Digest", value)
    if not digests:
        return None
    if REPR_DIGEST not in digests:
        raise errors.InvalidHeader(f"Repr-Digest names {', '.join(sorted(digests))}; this server checks the whole "
                                   "file's sha-256 only: send Repr-Digest: sha-256=:<base64>:")
    digest = digests[REPR_DIGEST]
    if len(digest) != 32:
        raise errors.InvalidHeader(f"Repr-Digest's sha-256 must be 32 bytes, not {len(digest)}")
    return digest.hex()


def repr_digest_field(sha256: str) -> str:
    """Repr-Digest (RFC 9530) for a file's sha256 given as hex: `sha-256=:<base64>:`."""
    return f"{REPR_DIGEST}=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"


def wants_sha256(value: str | None) -> bool:
    """Want-Repr-Digest (RFC 9530) asks for sha-256: listed with a preference from 1 to 10 (0: not acceptable).
    A field that does not parse is ignored, as a preference may be."""
    for member in (value or "").split(","):
        key, equals, weight = member.strip().partition("=")
        if key.strip() == REPR_DIGEST and equals:
            return _item(weight).isdigit() and 0 < int(_item(weight)) <= 10
    return False


def disposition_filename(value: str | None) -> str | None:
    """The file name of Content-Disposition (RFC 6266): `filename*` (RFC 8187, UTF-8 or ISO-8859-1) over
    `filename`; None without either. Not validated here: the caller applies the model-name rules."""
    if value is None or not value.strip():
        return None
    params = _disposition_params(value)
    extended = params.get("filename*")
    if extended is not None:
        charset, quote1, rest = extended.partition("'")
        _language, quote2, encoded = rest.partition("'")
        if not quote1 or not quote2 or charset.lower() not in ("utf-8", "iso-8859-1"):
            raise errors.InvalidFilename("Content-Disposition's filename* must be UTF-8''<percent-encoded name>")
        try:
            return urllib.parse.unquote(encoded, encoding=charset.lower(), errors="strict")
        except UnicodeDecodeError:
            raise errors.InvalidFilename("Content-Disposition's filename* is not valid UTF-8") from None
    return params.get("filename")


def _disposition_params(value: str) -> dict[str, str]:
    """`type; name=token; name="quoted \\" string"` → {name (lower case): value}; malformed → InvalidHeader."""
    position = value.find(";")
    disposition = (value if position < 0 else value[:position]).strip()
    if not _TOKEN.match(disposition):
        raise errors.InvalidHeader(f"Content-Disposition must start with a disposition type such as inline or "
                                   f"attachment, not {value[:60]!r}")
    params: dict[str, str] = {}
    rest = "" if position < 0 else value[position + 1:]
    index = 0
    while index < len(rest):
        while index < len(rest) and rest[index] in " \t;":
            index += 1
        if index >= len(rest):
            break
        equals = rest.find("=", index)
        if equals < 0:
            raise errors.InvalidHeader(f"Content-Disposition parameter {rest[index:index + 40]!r} has no value")
        name = rest[index:equals].strip().lower()
        index = equals + 1
        while index < len(rest) and rest[index] in " \t":
            index += 1
        if index < len(rest) and rest[index] == '"':
            text, index = _quoted_string(rest, index)
        else:
            end = rest.find(";", index)
            end = len(rest) if end < 0 else end
            text, index = rest[index:end].strip(), end
        if not _TOKEN.match(name) or name in params:
            raise errors.InvalidHeader(f"Content-Disposition has a malformed or repeated parameter {name[:40]!r}")
        params[name] = text
    return params


def _quoted_string(text: str, index: int) -> tuple[str, int]:
    """The quoted-string starting at text[index] (a double quote), unescaped; and the index after it."""
    out = []
    index += 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            out.append(text[index + 1])
            index += 2
            continue
        if char == '"':
            return "".join(out), index + 1
        out.append(char)
        index += 1
    raise errors.InvalidHeader("Content-Disposition has an unterminated quoted string")
