"""Pure parsers and checks for tus 1.0 headers: strings in, values out, errors.* raised. No I/O."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence

from modeldrop.server import errors
from modeldrop.server.store.info import UPLOAD_ID

TUS_VERSION = "1.0.0"
PATCH_CONTENT_TYPE = "application/offset+octet-stream"
CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256", "sha512")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_METADATA_KEY = re.compile(r"^[\x21-\x7e]+$")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
MAX_FILENAME_BYTES = 255
# What a model's file name may hold. Every real GGUF name seen on Hugging Face fits (Qwen2.5-7B-Instruct-Q4_K_M.gguf,
# mmproj-model-f16.gguf, x-00001-of-00003.gguf); anything wider lets look-alikes in: U+2215 DIVISION SLASH reads as
# "/", U+FF0E as ".", Cyrillic "а" as Latin "a" (two models whose names look the same in llama-server's list)
_FILENAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+ ()")
_FILENAME_CHARS_SHOWN = "ASCII letters, digits, space and . _ - + ( )"


def check_tus_resumable(value: str | None) -> None:
    if value != TUS_VERSION:
        shown = "missing" if value is None else f"{value!r}"
        raise errors.PreconditionFailed(
            f"Tus-Resumable is {shown}; this server speaks tus {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


def parse_non_negative(name: str, value: str) -> int:
    """Upload-Offset, Upload-Length: a plain non-negative decimal integer (no sign, no spaces)."""
    if not _DIGITS.match(value):
        raise errors.InvalidHeader(f"{name} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def parse_content_length(headers: Mapping[str, str]) -> int | None:
    """The body size a request announces; None when it is sent chunked (or not announced)."""
    value = headers.get("content-length")
    return None if value is None else parse_non_negative("Content-Length", value.strip())


def parse_creation_length(headers: Mapping[str, str]) -> int | None:
    """The Upload-Length of a creation request, or None when the client defers it (Upload-Defer-Length: 1)."""
    length = headers.get("upload-length")
    deferred = headers.get("upload-defer-length")
    if length is not None and deferred is not None:
        raise errors.InvalidHeader("send Upload-Length or Upload-Defer-Length, not both")
    if deferred is not None:
        if deferred != "1":
            raise errors.InvalidHeader("Upload-Defer-Length must be 1")
        return None
    if length is None:
        raise errors.InvalidHeader("Upload-Length or Upload-Defer-Length: 1 is required")
    return parse_non_negative("Upload-Length", length)


def parse_metadata(value: str | None, max_bytes: int) -> dict[str, str]:
    """`key base64,key2 base64,key3`: keys unique and non-empty, values valid base64 of UTF-8 text."""
    if value is None or value.strip() == "":
        return {}
    if len(value) > max_bytes:
        raise errors.InvalidMetadata(f"Upload-Metadata is {len(value)} bytes; at most {max_bytes} are accepted")
    pairs: dict[str, str] = {}
    for item in value.split(","):
        parts = item.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise errors.InvalidMetadata(f"malformed Upload-Metadata entry {item.strip()[:60]!r}")
        key = parts[0]
        if not _METADATA_KEY.match(key):
            raise errors.InvalidMetadata(f"Upload-Metadata key {key[:60]!r} has spaces or non-ASCII characters")
        if key in pairs:
            raise errors.InvalidMetadata(f"Upload-Metadata key {key!r} appears twice")
        pairs[key] = _decode_metadata_value(key, parts[1] if len(parts) == 2 else "")
    return pairs


def _decode_metadata_value(key: str, encoded: str) -> str:
    if not _BASE64.match(encoded) or len(encoded) % 4:
        raise errors.InvalidMetadata(f"the value of Upload-Metadata key {key!r} is not valid base64")
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise errors.InvalidMetadata(f"the value of Upload-Metadata key {key!r} is not base64 of UTF-8 text") from None


def validate_filename(name: str | None) -> str:
    """A plain `.gguf` file name that is safe as a path component and in llama-server's model list."""
    if name is None or name == "":
        raise errors.InvalidFilename("the upload needs `filename` metadata ending in .gguf")
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise errors.InvalidFilename(f"the filename is longer than {MAX_FILENAME_BYTES} bytes")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise errors.InvalidFilename(f"{_shown(name)} is not a plain file name (no /, \\, .. or leading dot)")
    if name.startswith("-"):  # read as an option by the shell tools people run on the models directory
        raise errors.InvalidFilename(f"{_shown(name)} starts with '-'; start the name with a letter or digit")
    for char in name:
        if char not in _FILENAME_CHARS:
            raise errors.InvalidFilename(f"the filename contains {_describe(char)}, which is not allowed: "
                                         f"use only {_FILENAME_CHARS_SHOWN}")
    # (the safe set also keeps out control and invisible characters, and names that are not NFC)
    if name != name.strip():
        raise errors.InvalidFilename("the filename starts or ends with white space")
    if not name.lower().endswith(".gguf") or len(name) == len(".gguf"):
        raise errors.InvalidFilename(f"{_shown(name)} is not a .gguf file: only GGUF models can be uploaded")
    return name


def _shown(name: str) -> str:
    return repr(name[:80])


def _describe(char: str) -> str:
    if " " < char < "\x7f":
        return repr(char)
    if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
        return f"the control or invisible character U+{ord(char):04X}"
    return f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip()


def validate_sha256(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _SHA256_HEX.match(value):
        raise errors.InvalidMetadata("`sha256` metadata must be 64 hexadecimal digits")
    return value.lower()


def check_patch_content_type(value: str | None) -> None:
    if value is None or value.split(";")[0].strip().lower() != PATCH_CONTENT_TYPE:
        raise errors.UnsupportedMediaType(f"PATCH needs Content-Type: {PATCH_CONTENT_TYPE}, not {value!r}")


@dataclasses.dataclass(frozen=True)
class Concat:
    kind: str  # "partial" or "final"
    parts: tuple[str, ...] = ()  # upload URLs (final only), as sent


def parse_upload_concat(value: str | None) -> Concat | None:
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return Concat("partial")
    if value.startswith("final;"):
        urls = tuple(url for url in value[len("final;"):].split(" ") if url)
        if not urls:
            raise errors.InvalidHeader("Upload-Concat: final; needs at least one partial upload URL")
        if len(urls) > 1000:
            raise errors.InvalidHeader("Upload-Concat lists more than 1000 partial uploads")
        return Concat("final", urls)
    raise errors.InvalidHeader("Upload-Concat must be `partial` or `final;<url> <url>...`")


@dataclasses.dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes


def parse_upload_checksum(value: str | None) -> Checksum | None:
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise errors.BadRequest(f"unsupported checksum algorithm {algorithm[:20]!r}; "
                                f"use one of {', '.join(CHECKSUM_ALGORITHMS)}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise errors.BadRequest("Upload-Checksum's value is not valid base64") from None
    if len(digest) != hashlib.new(algorithm).digest_size:
        # an empty or cut digest can never match: refuse it before the body is stored, not with 460 after
        raise errors.BadRequest(f"Upload-Checksum's {algorithm} digest must be {hashlib.new(algorithm).digest_size} "
                                f"bytes, not {len(digest)}")
    return Checksum(algorithm, digest)


def upload_id_from_url(url: str, base_path: str) -> str | None:
    """The id in an upload URL (absolute or relative) under base_path, or None if it is not one of ours."""
    path = url
    if "://" in url:
        path = "/" + url.split("://", 1)[1].partition("/")[2]
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith(base_path):
        return None
    candidate = path[len(base_path):]
    return candidate if UPLOAD_ID.fullmatch(candidate) else None


def concat_part_ids(urls: Sequence[str], base_path: str) -> list[str]:
    """The ids of the partial uploads a final Upload-Concat lists, each an upload of this server, each once."""
    part_ids: list[str] = []
    for url in urls:
        part_id = upload_id_from_url(url, base_path)
        if part_id is None:
            raise errors.InvalidHeader(f"Upload-Concat names {url[:80]!r}, which is not an upload of this server")
        if part_id in part_ids:
            raise errors.InvalidHeader(f"Upload-Concat lists partial upload {part_id} twice; a partial upload can "
                                       "be used once")
        part_ids.append(part_id)
    return part_ids


def parse_forwarded(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(scheme, host) from Forwarded or X-Forwarded-Proto/-Host; only used with --trust-proxy."""
    scheme = host = None
    forwarded = headers.get("forwarded")
    if forwarded:
        first = forwarded.split(",")[0]
        for pair in first.split(";"):
            key, _, value = pair.strip().partition("=")
            value = value.strip().strip('"')
            if key.lower() == "proto" and value.lower() in ("http", "https"):
                scheme = value.lower()
            elif key.lower() == "host" and _looks_like_host(value):
                host = value
    proto = headers.get("x-forwarded-proto")
    if scheme is None and proto:
        candidate = proto.split(",")[0].strip().lower()
        if candidate in ("http", "https"):
            scheme = candidate
    forwarded_host = headers.get("x-forwarded-host")
    if host is None and forwarded_host:
        candidate = forwarded_host.split(",")[0].strip()
        if _looks_like_host(candidate):
            host = candidate
    return scheme, host


def _looks_like_host(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9.\-\[\]:]{1,255}", value))
