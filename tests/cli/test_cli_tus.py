"""cli/tus.py: the client's protocol rules, strings and numbers in, values out."""

from __future__ import annotations

import base64

import pytest

from modeldrop.cli import tus

# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", 4096),
    ("1MiB", 1024**2),
    ("90MiB", 90 * 1024**2),
    ("90 MiB", 90 * 1024**2),
    ("100M", 100 * 1024**2),
    ("100mb", 100 * 1024**2),
    ("2G", 2 * 1024**3),
    ("1.5g", 3 * 1024**3 // 2),
    ("1t", 1024**4),
    ("512k", 512 * 1024),
    ("7b", 7),
])
def test_parse_size_accepts_bytes_and_binary_units(text: str, expected: int) -> None:
    assert tus.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1M", "12 parsecs", "1..5M", "0x10"])
def test_parse_size_rejects_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        tus.parse_size(text)


@pytest.mark.parametrize(("count", "expected"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                                 (5 * 1024**3, "5.0 GiB"), (3 * 1024**5, "3072.0 TiB")])
def test_format_size_reads_like_a_person_would_write_it(count: int, expected: str) -> None:
    assert tus.format_size(count) == expected


# ---------------------------------------------------------------- checksums and FILE=HEX

DIGEST = "AB" * 32


def test_normalize_sha256_lowercases_and_rejects_wrong_lengths() -> None:
    assert tus.normalize_sha256(f" {DIGEST} ") == DIGEST.lower()
    with pytest.raises(ValueError, match="64 hex digits"):
        tus.normalize_sha256("ab12")
    with pytest.raises(ValueError):
        tus.normalize_sha256("g" * 64)


def test_split_file_argument_takes_a_trailing_digest() -> None:
    assert tus.split_file_argument(f"shard.gguf={DIGEST}", is_file=False) == ("shard.gguf", DIGEST.lower())


@pytest.mark.parametrize("argument", ["model.gguf", "a=b.gguf", "model.gguf=ab12", "=" + DIGEST])
def test_split_file_argument_leaves_plain_paths_alone(argument: str) -> None:
    assert tus.split_file_argument(argument, is_file=False) == (argument, None)


def test_split_file_argument_prefers_an_existing_file_of_that_name() -> None:
    argument = f"odd.gguf={DIGEST}"
    assert tus.split_file_argument(argument, is_file=True) == (argument, None)


# ---------------------------------------------------------------- metadata and headers


def _decode_metadata(header: str) -> dict[str, str]:
    pairs = (item.split(" ") for item in header.split(","))
    return {key: base64.b64decode(value).decode() for key, value in pairs}


def test_upload_metadata_encodes_filename_type_and_digest_in_base64() -> None:
    header = tus.upload_metadata("Llama-3-8B-Q4_K_M.gguf", "ab" * 32)
    assert header.startswith("filename TGxhbWEtMy04Qi1RNF9LX00uZ2d1Zg==,filetype ")
    assert _decode_metadata(header) == {"filename": "Llama-3-8B-Q4_K_M.gguf",
                                        "filetype": "application/octet-stream", "sha256": "ab" * 32}


def test_upload_metadata_leaves_out_an_absent_digest() -> None:
    assert set(_decode_metadata(tus.upload_metadata("m.gguf", None))) == {"filename", "filetype"}


def test_encode_metadata_keeps_non_ascii_filenames_as_utf8() -> None:
    assert _decode_metadata(tus.encode_metadata({"filename": "modèle, v2.gguf"})) == {"filename": "modèle, v2.gguf"}


@pytest.mark.parametrize("key", ["", "file name", "a,b", "clé"])
def test_encode_metadata_rejects_keys_tus_cannot_carry(key: str) -> None:
    with pytest.raises(ValueError, match="Upload-Metadata key"):
        tus.encode_metadata({key: "x"})


def test_base_headers_carry_the_version_and_the_token_only_when_given() -> None:
    assert tus.base_headers(None) == {"Tus-Resumable": "1.0.0"}
    assert tus.base_headers("s3cret") == {"Tus-Resumable": "1.0.0", "Authorization": "Bearer s3cret"}


def test_creation_and_patch_headers() -> None:
    created = tus.creation_headers(1234, "filename eA==", "t")
    assert created["Upload-Length"] == "1234" and created["Upload-Metadata"] == "filename eA=="
    assert created["Authorization"] == "Bearer t"
    patch = tus.patch_headers(100, 50, None)
    assert patch == {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
                     "Upload-Offset": "100", "Content-Length": "50"}


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("1048576", 1048576), (" 7 ", 7)])
def test_parse_offset_reads_non_negative_integers(value: str, expected: int) -> None:
    assert tus.parse_offset(value) == expected


@pytest.mark.parametrize("value", [None, "", "-1", "1.5", "ten"])
def test_parse_offset_rejects_anything_else(value: str | None) -> None:
    with pytest.raises(tus.ProtocolError):
        tus.parse_offset(value)


@pytest.mark.parametrize(("offset", "total", "chunk", "expected"), [
    (0, 100, None, 100), (40, 100, None, 60), (0, 100, 30, 30), (90, 100, 30, 10), (100, 100, 30, 0)])
def test_chunk_length_is_the_rest_or_at_most_a_chunk(offset: int, total: int, chunk: int | None, expected: int) -> None:
    assert tus.chunk_length(offset, total, chunk) == expected


def test_error_message_reads_modeldrop_errors() -> None:
    body = b'{"error": "not_gguf", "message": "the file does not start with the GGUF magic"}'
    assert tus.error_message(400, "Bad Request", body) == ("not_gguf", "the file does not start with the GGUF magic")


def test_error_message_falls_back_to_the_status_and_body_of_a_proxy() -> None:
    code, text = tus.error_message(413, "Payload Too Large", b"<html>413 Request Entity Too Large</html>")
    assert code is None
    assert text.startswith("HTTP 413 Payload Too Large: <html>413")
    assert tus.error_message(502, "Bad Gateway", b"") == (None, "HTTP 502 Bad Gateway")


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("HTTP://Example.COM:8080/", "http://example.com:8080"),
    ("https://example.com/modeldrop/", "https://example.com/modeldrop"),
])
def test_normalize_server_url_gives_one_spelling(url: str, expected: str) -> None:
    assert tus.normalize_server_url(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://host", "http://", ""])
def test_normalize_server_url_rejects_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="server URL"):
        tus.normalize_server_url(url)


def test_creation_and_api_urls_sit_under_the_server_url() -> None:
    assert tus.creation_url("http://h:8080/") == "http://h:8080/files/"
    assert tus.creation_url("https://h/base") == "https://h/base/files/"
    assert tus.api_url("http://h:8080", "/models") == "http://h:8080/api/models"


@pytest.mark.parametrize(("location", "expected"), [
    ("/files/abc", "http://h:8080/files/abc"),
    ("abc", "http://h:8080/files/abc"),
    ("https://proxy.example/files/abc", "https://proxy.example/files/abc"),
    ("  /files/abc ", "http://h:8080/files/abc"),
])
def test_resolve_location_accepts_relative_and_absolute(location: str, expected: str) -> None:
    assert tus.resolve_location("http://h:8080/files/", location) == expected


@pytest.mark.parametrize("location", [None, "", "  "])
def test_resolve_location_without_a_location_is_a_protocol_error(location: str | None) -> None:
    with pytest.raises(tus.ProtocolError, match="no Location"):
        tus.resolve_location("http://h/files/", location)


def test_status_url_for_an_upload_sits_under_the_api() -> None:
    assert tus.status_url_for("http://h:8080/files/0123abcd") == "http://h:8080/api/uploads/0123abcd"


# ---------------------------------------------------------------- fingerprints

BASE = ("http://h:8080", "/models/m.gguf", 5_000_000_000, 1_700_000_000_123_456_789)


def test_fingerprint_is_stable_for_the_same_file_and_server() -> None:
    assert tus.fingerprint(*BASE) == tus.fingerprint(*BASE)
    assert tus.fingerprint("HTTP://H:8080/", *BASE[1:]) == tus.fingerprint(*BASE)
    assert len(tus.fingerprint(*BASE)) == 64


@pytest.mark.parametrize("changed", [
    ("http://other:8080", *BASE[1:]),
    (BASE[0], "/models/other.gguf", *BASE[2:]),
    (*BASE[:2], BASE[2] + 1, BASE[3]),
    (*BASE[:3], BASE[3] + 1),
])
def test_fingerprint_changes_with_server_path_size_or_mtime(changed: tuple) -> None:
    assert tus.fingerprint(*changed) != tus.fingerprint(*BASE)


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [409, 423, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert tus.is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 412, 413, 415, 429, 460, 501, 505, 507])
def test_final_statuses_are_not_retried(status: int) -> None:
    assert not tus.is_retryable_status(status)


def test_a_conflict_with_an_installed_model_is_final_but_an_offset_conflict_is_not() -> None:
    assert not tus.is_retryable_status(409, "already_installed")
    assert tus.is_retryable_status(409, "offset_mismatch")


def test_backoff_doubles_from_the_first_delay_and_is_capped() -> None:
    policy = tus.RetryPolicy(attempts=8, first_delay=1.0, max_delay=60.0)
    top = policy.schedule([0.999999] * 8)
    assert [round(delay) for delay in top] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.schedule([0.0] * 8) == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_backoff_jitter_stays_within_half_to_full_delay() -> None:
    policy = tus.RetryPolicy(first_delay=2.0, max_delay=10.0)
    for attempt in range(1, 10):
        nominal = min(10.0, 2.0 * 2 ** (attempt - 1))
        for jitter in (0.0, 0.25, 0.5, 0.99):
            assert nominal / 2 <= policy.delay(attempt, jitter) <= nominal


def test_backoff_schedule_is_bounded_by_the_attempts() -> None:
    assert len(tus.RetryPolicy(attempts=3).schedule([0.5] * 10)) == 3
    assert tus.RetryPolicy(attempts=0).schedule([0.5] * 10) == []
    with pytest.raises(ValueError):
        tus.RetryPolicy().delay(0, 0.5)


@pytest.mark.parametrize(("value", "expected"), [("30", 30.0), (" 5 ", 5.0), (None, None),
                                                 ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-3", None)])
def test_retry_after_is_read_in_seconds_only(value: str | None, expected: float | None) -> None:
    assert tus.retry_after_seconds(value) == expected


# ---------------------------------------------------------------- final status lines


def test_describe_an_installed_upload() -> None:
    document = {"state": "installed", "final_name": "Llama-3-8B-Q4_K_M.gguf", "sha256": "ab12cd34ef56" + "0" * 52,
                "gguf": {"architecture": "llama", "quantization": "Q4_K_M", "context_length": 8192}}
    assert tus.describe_status(document, "local.gguf") == (
        "installed Llama-3-8B-Q4_K_M.gguf (llama, Q4_K_M, sha256 ab12cd34ef56…)")


def test_describe_a_failed_upload_gives_the_reason() -> None:
    document = {"state": "failed", "reason": "truncated: ends at 100 of 200 bytes", "final_name": None}
    assert tus.describe_status(document, "m.gguf") == "failed m.gguf: truncated: ends at 100 of 200 bytes"


def test_describe_a_state_still_in_progress() -> None:
    assert tus.describe_status({"state": "verifying"}, "m.gguf") == "verifying m.gguf"


# ---------------------------------------------------------------- split sets

WAITING = {"state": "verifying", "set": {"prefix": "Big", "count": 3, "present": [1], "missing": [2, 3]}}


@pytest.mark.parametrize(("name", "expected"), [
    ("Big-00002-of-00003.gguf", ("Big", 2)),
    ("a-b-00001-of-00010.GGUF", ("a-b", 1)),
    ("Big.gguf", None),
    ("Big-2-of-3.gguf", None),
])
def test_shard_of_reads_llama_cpp_shard_names(name: str, expected: tuple[str, int] | None) -> None:
    assert tus.shard_of(name) == expected


def test_missing_shards_only_while_the_set_waits() -> None:
    assert tus.missing_shards(WAITING) == [2, 3]
    assert tus.missing_shards({**WAITING, "state": "installed"}) == []
    assert tus.missing_shards({"state": "verifying"}) == []


def test_a_waiting_shard_is_settled_only_when_nothing_coming_completes_its_set() -> None:
    assert not tus.is_settled(WAITING, wait=True, shards_coming={("Big", 2), ("Big", 3)})
    assert not tus.is_settled(WAITING, wait=True, shards_coming={("Big", 3)})
    assert tus.is_settled(WAITING, wait=True, shards_coming={("Other", 2)})
    assert tus.is_settled(WAITING, wait=True, shards_coming=set())


def test_whole_models_settle_on_final_states_or_without_wait() -> None:
    assert not tus.is_settled({"state": "queued"}, wait=True, shards_coming=set())
    assert tus.is_settled({"state": "queued"}, wait=False, shards_coming=set())
    assert tus.is_settled({"state": "failed"}, wait=True, shards_coming=set())
    assert tus.is_settled({"state": "installed"}, wait=True, shards_coming=set())


@pytest.mark.parametrize(("document", "wait", "expected"), [
    ({"state": "installed"}, True, True),
    ({"state": "failed"}, True, False),
    ({"state": "failed"}, False, False),
    ({"state": "verifying"}, False, True),
    (WAITING, True, True),
])
def test_is_success(document: dict, wait: bool, expected: bool) -> None:
    assert tus.is_success(document, wait) is expected


def test_describe_a_shard_waiting_for_its_set() -> None:
    assert tus.describe_status(WAITING, "Big-00001-of-00003.gguf") == (
        "waiting Big-00001-of-00003.gguf: verified; its split set still needs shard(s) 00002, 00003 of 00003")
