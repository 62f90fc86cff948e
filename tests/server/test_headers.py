"""server/tus/headers.py: pure parsers, strings in, values or an error `code` out."""

from __future__ import annotations

import base64

import pytest

from modeldrop.server import errors
from modeldrop.server.tus import headers as tus


def code_of(call, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.HTTPError) as caught:
        call(*args)
    return caught.value.code


def test_tus_resumable_accepts_only_1_0_0() -> None:
    tus.check_tus_resumable("1.0.0")
    for value in (None, "1.0", "0.2.2", " 1.0.0x"):
        with pytest.raises(errors.HTTPError) as caught:
            tus.check_tus_resumable(value)
        assert caught.value.status == 412 and caught.value.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("42", 42), ("9" * 19, int("9" * 19))])
def test_non_negative_parses_plain_integers(value: str, expected: int) -> None:
    assert tus.parse_non_negative("Upload-Offset", value) == expected


@pytest.mark.parametrize("value", ["", "-1", "+1", "1.0", "1e3", " 1", "0x10", "9" * 20, "١٢"])
def test_non_negative_rejects_everything_else(value: str) -> None:
    assert code_of(tus.parse_non_negative, "Upload-Offset", value) == "invalid_header"


@pytest.mark.parametrize(("headers", "expected"), [({"upload-length": "10"}, 10), ({"upload-defer-length": "1"}, None)])
def test_creation_length(headers: dict[str, str], expected: int | None) -> None:
    assert tus.parse_creation_length(headers) == expected


@pytest.mark.parametrize("headers", [{}, {"upload-length": "1", "upload-defer-length": "1"},
                                     {"upload-defer-length": "2"}, {"upload-length": "x"}])
def test_creation_length_errors(headers: dict[str, str]) -> None:
    assert code_of(tus.parse_creation_length, headers) == "invalid_header"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_metadata_parses_pairs_and_empty_values() -> None:
    header = f"filename {b64('m.gguf')},empty,alsoempty ,sha256 {b64('ab')}"
    assert tus.parse_metadata(header, 4096) == {"filename": "m.gguf", "empty": "", "alsoempty": "", "sha256": "ab"}
    assert tus.parse_metadata(None, 10) == {} and tus.parse_metadata("  ", 10) == {}


@pytest.mark.parametrize("header", ["a b c", ",a", "a,a", f"k {b64('x')[:-1]}", "k ***", "k //79",
                                    "ké " + b64("x"), "a  " + b64("x")])
def test_metadata_malformed(header: str) -> None:
    assert code_of(tus.parse_metadata, header, 4096) == "invalid_metadata"


def test_metadata_size_limit() -> None:
    assert code_of(tus.parse_metadata, "k " + b64("x" * 100), 50) == "invalid_metadata"


@pytest.mark.parametrize("name", ["m.gguf", "M.GGUF", "a b.gguf"])
def test_filename_valid(name: str) -> None:
    assert tus.validate_filename(name) == name


@pytest.mark.parametrize("name", [None, "", "m.bin", ".gguf", "a/b.gguf", "a\\b.gguf", "..gguf", ".a.gguf",
                                  "a\x00.gguf", "a\r\n.gguf", "a\u202e.gguf", "a\u200d.gguf", " a.gguf",
                                  "a" * 251 + ".gguf", "e\u0301.gguf"])
def test_filename_invalid(name: str | None) -> None:
    assert code_of(tus.validate_filename, name) == "invalid_filename"


def test_sha256_metadata() -> None:
    assert tus.validate_sha256("AB" * 32) == "ab" * 32
    assert tus.validate_sha256(None) is None and tus.validate_sha256("") is None
    assert code_of(tus.validate_sha256, "ab" * 31) == "invalid_metadata"


@pytest.mark.parametrize("value", ["application/offset+octet-stream", "Application/Offset+Octet-Stream; x=1"])
def test_patch_content_type_valid(value: str) -> None:
    tus.check_patch_content_type(value)


@pytest.mark.parametrize("value", [None, "", "application/octet-stream", "application/offset+octet-streamx"])
def test_patch_content_type_invalid(value: str | None) -> None:
    assert code_of(tus.check_patch_content_type, value) == "unsupported_media_type"


def test_upload_concat() -> None:
    assert tus.parse_upload_concat(None) is None
    assert tus.parse_upload_concat("partial") == tus.Concat("partial")
    assert tus.parse_upload_concat("final;/files/a  http://h/files/b") == tus.Concat("final", ("/files/a",
                                                                                            "http://h/files/b"))
    for bad in ("final;", "final", "partial;", "x"):
        assert code_of(tus.parse_upload_concat, bad) == "invalid_header"


def test_upload_checksum() -> None:
    digest = bytes(20)
    parsed = tus.parse_upload_checksum("SHA1 " + base64.b64encode(digest).decode())
    assert parsed == tus.Checksum("sha1", digest)
    for bad in ("crc32 AAAA", "sha1", "sha1 !!", "sha256 " + base64.b64encode(digest).decode()):
        assert code_of(tus.parse_upload_checksum, bad) == "bad_request"


@pytest.mark.parametrize(("url", "expected"), [
    ("/files/" + "a" * 32, "a" * 32), ("http://h:1/files/" + "b" * 32 + "?x#y", "b" * 32),
    ("/files/../" + "a" * 32, None), ("/files/" + "A" * 32, None), ("/other/" + "a" * 32, None),
    ("/files/" + "a" * 32 + "/x", None), ("", None),
])
def test_upload_id_from_url(url: str, expected: str | None) -> None:
    assert tus.upload_id_from_url(url, "/files/") == expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, (None, None)),
    ({"forwarded": 'for=x;proto=HTTPS;host="a.example:8443", for=y;host=b'}, ("https", "a.example:8443")),
    ({"x-forwarded-proto": "https, http", "x-forwarded-host": "a.example, b"}, ("https", "a.example")),
    ({"x-forwarded-proto": "ftp", "x-forwarded-host": "a b"}, (None, None)),
    ({"forwarded": "host=evil/x"}, (None, None)),
])
def test_parse_forwarded(headers: dict[str, str], expected: tuple[str | None, str | None]) -> None:
    assert tus.parse_forwarded(headers) == expected


# Names real GGUF files carry on Hugging Face: all inside the safe set
@pytest.mark.parametrize("name", ["Qwen2.5-7B-Instruct-Q4_K_M.gguf", "mmproj-model-f16.gguf",
                                  "x-00001-of-00003.gguf", "Meta-Llama-3.1-8B-Instruct.IQ4_XS.gguf",
                                  "llama-2-7b.Q4_K_M.gguf", "gemma+lora.gguf", "Llama 3 8B (Q4_K_M).gguf"])
def test_filename_real_hugging_face_names_are_accepted(name: str) -> None:
    assert tus.validate_filename(name) == name


# Look-alikes of path syntax, and anything outside ASCII letters, digits, space and . _ - + ( ):
# U+2215 DIVISION SLASH and U+2044 FRACTION SLASH look like "/", U+FF0E FULLWIDTH FULL STOP and U+2024 ONE DOT
# LEADER like ".", Cyrillic "а" like Latin "a" (two models whose names look the same)
@pytest.mark.parametrize(("name", "shown"), [
    ("\u2215etc.gguf", "U+2215"), ("a\u2044b.gguf", "U+2044"), ("\uff0e\uff0e.gguf", "U+FF0E"),
    ("a\u2024\u2024b.gguf", "U+2024"), ("\uff3cx.gguf", "U+FF3C"), ("mod\u0435l.gguf", "U+0435"),
    ("\u00fc.gguf", "U+00FC"), ("a:b.gguf", "':'"), ("a*b.gguf", "'*'"), ("a%2fb.gguf", "'%'"),
    ("a\"b.gguf", "'\"'"), ("a;b.gguf", "';'"), ("a\u00a0b.gguf", "U+00A0"),
])
def test_filename_outside_the_safe_set_names_the_character(name: str, shown: str) -> None:
    with pytest.raises(errors.HTTPError) as caught:
        tus.validate_filename(name)
    assert caught.value.code == "invalid_filename" and caught.value.status == 400
    assert shown in caught.value.message


@pytest.mark.parametrize("name", ["-rf.gguf", "--help.gguf", ".hidden.gguf"])
def test_filename_leading_dash_or_dot_is_refused(name: str) -> None:
    assert code_of(tus.validate_filename, name) == "invalid_filename"
