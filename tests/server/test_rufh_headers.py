"""server/rufh/headers.py: the RUFH header fields as strings in, values out (no server)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from modeldrop.server import errors
from modeldrop.server.rufh import headers as rufh

SHA256 = hashlib.sha256(b"model").digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(("value", "parsed"), [
    ("?1", True), ("?0", False), (" ?1 ", True), ("?1;a=1", True),
    ("1", None), ("true", None), ("?2", None), ("", None), (None, None),
])
def test_rufh_booleans_other_values_are_ignored(value: str | None, parsed: bool | None) -> None:
    assert rufh.parse_boolean(value) is parsed


@pytest.mark.parametrize(("value", "parsed"), [
    ("0", 0), ("123", 123), (" 42 ", 42), ("7;p", 7), ("999999999999999", 999999999999999),
    ("-1", None), ("1.5", None), ("1e3", None), ("0x10", None), ("1234567890123456", None), ("", None),
])
def test_rufh_integers_other_values_are_ignored(value: str, parsed: int | None) -> None:
    assert rufh.parse_integer(value) == parsed


@pytest.mark.parametrize(("interop", "drafts", "interim"), [
    ("3", "-01", True), ("5", "-03", True), ("6", "-04, -05", True), ("8", "-09 to -11", True),
    ("9", "-12 to -15", True), ("4", "none named", False), ("7", "none named", False), ("10", "none named", False),
    ("x", "none named", False), (None, "none named", False),
])
def test_rufh_revision_by_interop_version(interop: str | None, drafts: str, interim: bool) -> None:
    headers = {} if interop is None else {"upload-draft-interop-version": interop}
    revision = rufh.revision(headers)
    assert revision.drafts == drafts
    assert revision.interim is interim


def test_rufh_draft_01_says_upload_incomplete_inverted() -> None:
    old = rufh.REVISIONS[3]
    assert old.complete_header == "Upload-Incomplete"
    assert old.complete_value(True) == "?0" and old.complete_value(False) == "?1"
    assert rufh.completeness({"upload-incomplete": "?1"}, old) is False
    assert rufh.completeness({"upload-incomplete": "?0"}, old) is True
    assert rufh.completeness({"upload-complete": "?1"}, old) is None
    assert rufh.completeness({"upload-complete": "?1"}, rufh.CURRENT) is True


@pytest.mark.parametrize(("headers", "expected"), [
    ({"upload-draft-interop-version": "6"}, True),
    ({"upload-complete": "?0"}, True),
    ({"upload-incomplete": "?1"}, True),
    ({"upload-complete": "?0", "tus-resumable": "1.0.0"}, False),
    ({"upload-length": "10"}, False),
])
def test_rufh_requests_to_the_tus_endpoint_are_told_apart(headers: dict[str, str], expected: bool) -> None:
    assert rufh.is_rufh_request(headers) is expected


def test_rufh_limits_round_trip_and_min_size_when_unlimited() -> None:
    assert rufh.format_limits({}) == "min-size=0"
    text = rufh.format_limits({"max-size": 10, "max-append-size": 5, "max-age": 3600})
    assert rufh.parse_limits(text) == {"max-size": 10, "max-append-size": 5, "max-age": 3600}
    with pytest.raises(ValueError):
        rufh.parse_limits("max-size=1.5")


def test_rufh_content_digest_is_a_request_checksum() -> None:
    checksum = rufh.content_checksum(f"sha-256=:{b64(SHA256)}:")
    assert checksum is not None and (checksum.algorithm, checksum.digest) == ("sha256", SHA256)
    strongest = rufh.content_checksum(f"sha-256=:{b64(SHA256)}:, sha-512=:{b64(bytes(64))}:")
    assert strongest is not None and strongest.algorithm == "sha512"
    assert rufh.content_checksum(None) is None


@pytest.mark.parametrize("value", [
    "md5=:AAAA:",                          # an algorithm this server does not compute
    "sha-256=AAAA",                        # not a byte sequence
    "sha-256=:not base64!:",
    f"sha-256=:{b64(SHA256[:16])}:",       # a cut digest can never match: refused before the body
])
def test_rufh_content_digest_refusals(value: str) -> None:
    with pytest.raises(errors.InvalidHeader):
        rufh.content_checksum(value)


def test_rufh_repr_digest_is_the_files_sha256() -> None:
    assert rufh.representation_sha256(f"sha-256=:{b64(SHA256)}:") == SHA256.hex()
    assert rufh.representation_sha256(f"sha-512=:{b64(bytes(64))}:, sha-256=:{b64(SHA256)}:") == SHA256.hex()
    with pytest.raises(errors.InvalidHeader):
        rufh.representation_sha256(f"sha-512=:{b64(bytes(64))}:")  # never pretend to check what is not checked


@pytest.mark.parametrize(("value", "wanted"), [
    ("sha-256=1", True), ("sha-512=3, sha-256=10", True), ("sha-256=5;x=1", True), (None, False), ("", False),
    ("sha-512=10", False), ("sha-256=0", False), ("sha-256=11", False), ("sha-256", False), ("sha-256=high", False),
])
def test_rufh_want_repr_digest_asks_for_sha256_with_a_preference_from_1_to_10(value: str | None, wanted: bool) -> None:
    assert rufh.wants_sha256(value) is wanted


@pytest.mark.parametrize(("value", "name"), [
    ('attachment; filename="model.gguf"', "model.gguf"),
    ("inline; filename=model.gguf", "model.gguf"),
    ('attachment; filename="a \\"b\\".gguf"', 'a "b".gguf'),
    ("attachment; filename*=UTF-8''m%C3%B6del.gguf", "mödel.gguf"),
    ('attachment; filename="fallback.gguf"; filename*=UTF-8\'\'real%20name.gguf', "real name.gguf"),
    ("attachment; FILENAME=\"upper.gguf\"", "upper.gguf"),
    ("attachment", None),
    (None, None),
])
def test_rufh_content_disposition_filename(value: str | None, name: str | None) -> None:
    assert rufh.disposition_filename(value) == name


@pytest.mark.parametrize(("value", "error"), [
    ('attachment; filename="open', errors.InvalidHeader),
    ("; filename=x.gguf", errors.InvalidHeader),
    ('attachment; filename="a.gguf"; filename="b.gguf"', errors.InvalidHeader),
    ("attachment; filename*=UTF-8''%FF.gguf", errors.InvalidFilename),
    ("attachment; filename*=koi8-r''x.gguf", errors.InvalidFilename),
])
def test_rufh_content_disposition_refusals(value: str, error: type[errors.HTTPError]) -> None:
    with pytest.raises(error):
        rufh.disposition_filename(value)
