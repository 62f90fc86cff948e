"""The pure half of the upload client: tus 1.0 headers, metadata, URLs, fingerprints and the retry policy.

Nothing here does I/O, so every rule the client follows can be tested with strings and numbers
(`cli.client` sends the requests, `cli.upload` decides what to do with the answers).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit, urlunsplit

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
MODEL_CONTENT_TYPE = "application/octet-stream"
STATUS_HEADER = "Modeldrop-Status"
# on a creation the server answered with an upload it had already: resumed, linked or installed
MATCH_HEADER = "Modeldrop-Match"
_MATCH_WORDS = {
    "resumed": "continuing the server's unfinished upload of this file",
    "linked": "the server has these bytes under another name and installed them under this one; nothing to send",
    "installed": "already installed on the server; nothing to send",
}
DEFAULT_SERVER = "http://127.0.0.1:8080"

# States of the server's finalize pipeline; the last two never change again.
INSTALLED = "installed"
FAILED = "failed"
TERMINAL_STATES = frozenset({INSTALLED, FAILED})

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class ProtocolError(ValueError):
    """The server answered something a tus 1.0 server must not (e.g. no Location after a creation)."""


# ---------------------------------------------------------------- sizes


_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    for _spelling in (_letter, _letter + "b", _letter + "ib"):
        _UNITS[_spelling] = 1024**_power

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([a-z]*)$")


def parse_size(text: str) -> int:
    """'90MiB', '100M', '1.5g', '4096' -> bytes. Units are binary (M = MiB); a plain number is bytes."""
    match = _SIZE.match(text.strip().lower().replace(" ", ""))
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use bytes or a unit like 90MiB, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(count: float) -> str:
    """Bytes for people: 1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- checksums


def normalize_sha256(text: str) -> str:
    """A SHA-256 as 64 lowercase hex digits; anything else is a ValueError naming the value."""
    cleaned = text.strip()
    if not _SHA256_HEX.match(cleaned):
        raise ValueError(f"not a SHA-256 (64 hex digits): {text!r}")
    return cleaned.lower()


def split_file_argument(argument: str, is_file: bool) -> tuple[str, str | None]:
    """'model.gguf=<64 hex>' -> ('model.gguf', hex); a plain path -> (path, None).

    `is_file` says whether the whole argument names an existing file: a file whose own name ends in
    '=<64 hex>' is taken as it is rather than split.
    """
    path, separator, digest = argument.rpartition("=")
    if is_file or not separator or not path or not _SHA256_HEX.match(digest):
        return argument, None
    return path, digest.lower()


# ---------------------------------------------------------------- metadata and headers


def encode_metadata(pairs: Mapping[str, str]) -> str:
    """tus Upload-Metadata: 'key base64(value)' pairs joined by commas, in the order given."""
    parts = []
    for key, value in pairs.items():
        if not key or any(ch in key for ch in " ,") or not key.isascii():
            raise ValueError(f"invalid Upload-Metadata key: {key!r}")
        parts.append(f"{key} {base64.b64encode(value.encode()).decode('ascii')}")
    return ",".join(parts)


def upload_metadata(filename: str, sha256: str | None, set_name: str | None = None,
                    set_size: int | None = None) -> str:
    """The metadata modeldrop's server reads: the model's filename, a content type, an optional digest, and for
    a file of a model set the set's name and how many uploads make it (`set`, `set_size`)."""
    pairs = {"filename": filename, "filetype": MODEL_CONTENT_TYPE}
    if sha256:
        pairs["sha256"] = sha256
    if set_name is not None and set_size is not None:
        pairs.update(set=set_name, set_size=str(set_size))
    return encode_metadata(pairs)


def base_headers(token: str | None) -> dict[str, str]:
    """Headers every request carries: the tus version, and the bearer token when there is one."""
    headers = {"Tus-Resumable": TUS_VERSION}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def json_headers(token: str | None) -> dict[str, str]:
    """Headers of a GET to modeldrop's JSON API."""
    return {**base_headers(token), "Accept": "application/json"}


def creation_headers(length: int, metadata: str, token: str | None) -> dict[str, str]:
    return {**base_headers(token), "Upload-Length": str(length), "Upload-Metadata": metadata,
            "Content-Length": "0"}


def patch_headers(offset: int, count: int, token: str | None) -> dict[str, str]:
    return {**base_headers(token), "Content-Type": OFFSET_CONTENT_TYPE, "Upload-Offset": str(offset),
            "Content-Length": str(count)}


def parse_offset(value: str | None) -> int:
    """Upload-Offset / Upload-Length: a non-negative decimal integer, or ProtocolError."""
    if value is None or not value.strip().isdigit():
        raise ProtocolError(f"expected a non-negative integer offset from the server, got {value!r}")
    return int(value.strip())


def chunk_length(offset: int, total: int, chunk_size: int | None) -> int:
    """Bytes the next PATCH carries: the rest of the file, or at most `chunk_size` of it."""
    remaining = total - offset
    return remaining if chunk_size is None else min(remaining, chunk_size)


def error_message(status: int, reason: str, body: bytes) -> tuple[str | None, str]:
    """(code, text) from an error response: modeldrop sends {"error": code, "message": text}.

    A proxy in front of the server may answer with HTML or plain text instead: then there is no code
    and the text is the status line plus the start of the body, so the user still sees what happened.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        code = document.get("error")
        return (code if isinstance(code, str) else None), document["message"]
    text = body[:200].decode("utf-8", "replace").strip()
    summary = f"HTTP {status} {reason}".strip()
    return None, f"{summary}: {text}" if text else summary


def match_message(body: bytes, kind: str | None) -> str:
    """What the server did instead of making a new upload (Modeldrop-Match), in its own words when it gave them."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return str(document["message"])
    return _MATCH_WORDS.get(str(kind), f"the server answered the creation with {kind!r}")


# ---------------------------------------------------------------- URLs


def normalize_server_url(url: str) -> str:
    """'HTTP://Host:8080/base/' -> 'http://host:8080/base': one spelling per server, for fingerprints."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) server URL: {url!r}")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def creation_url(server: str) -> str:
    return f"{normalize_server_url(server)}/files/"


def api_url(server: str, path: str) -> str:
    return f"{normalize_server_url(server)}/api/{path.lstrip('/')}"


def resolve_location(request_url: str, location: str | None) -> str:
    """A Location (or Modeldrop-Status) header made absolute against the URL of the request it answered.

    tus allows relative and absolute Locations; a relative one is resolved like a browser would
    (RFC 3986), so '/files/ab' keeps the request's scheme and host.
    """
    if not location or not location.strip():
        raise ProtocolError("the server's answer has no Location for the new upload")
    return urljoin(request_url, location.strip())


def status_url_for(upload_url: str) -> str:
    """Where the upload's status lives when no response named it: /api/uploads/<id> beside /files/<id>.

    Only a fallback: the server names the status resource itself in Modeldrop-Status.
    """
    upload_id = urlsplit(upload_url).path.rstrip("/").rsplit("/", 1)[-1]
    return urljoin(upload_url, f"/api/uploads/{upload_id}")


# ---------------------------------------------------------------- resume state


def fingerprint(server: str, absolute_path: str, size: int, mtime_ns: int) -> str:
    """Names one version of one file on one server: the key under which its upload URL is remembered.

    A changed size or mtime means different bytes, so the old upload must not be continued.
    """
    identity = json.dumps([normalize_server_url(server), absolute_path, size, mtime_ns])
    return hashlib.sha256(identity.encode()).hexdigest()


# ---------------------------------------------------------------- retries


def is_retryable_status(status: int, error_code: str | None = None) -> bool:
    """Whether a failed request is worth repeating after a HEAD (tus-js-client's rule, made precise).

    5xx: the server or a proxy hiccuped. 409: our offset was stale (tus offset mismatch). 423: another
    request still holds the upload. Other 4xx are final: the same request would be refused again.
    Some answers in those ranges are final too: a 409 saying the model is already installed, and 5xx
    that describe the server rather than a moment (not implemented, version, disk full).
    """
    if status == 409:
        return error_code != "already_installed"
    if status == 423:
        return True
    return 500 <= status <= 599 and status not in (501, 505, 507)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (what a busy server or proxy sends); dates and junk are ignored."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


class RetryPolicy(NamedTuple):
    """How often and how patiently to retry: `attempts` consecutive failures without progress at most.

    (A NamedTuple rather than a dataclass: `dataclasses` alone adds milliseconds to every command's start.)
    """

    attempts: int = 8
    first_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, jitter: float) -> float:
        """Seconds to wait before retry number `attempt` (1-based); `jitter` is a random value in [0, 1).

        Exponential, capped, and "equal jitter": at least half the nominal delay, so clients that
        failed together (a server restart) do not come back together, yet none retries at once.
        """
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        nominal = min(self.max_delay, self.first_delay * 2.0 ** (attempt - 1))
        return nominal / 2 + nominal / 2 * jitter

    def schedule(self, jitters: Iterable[float]) -> list[float]:
        """Every delay this policy allows, one jitter value per attempt."""
        attempts = range(1, self.attempts + 1)
        return [self.delay(attempt, jitter) for attempt, jitter in zip(attempts, jitters, strict=False)]


# ---------------------------------------------------------------- split sets and final status

_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<number>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def shard_of(filename: str) -> tuple[str, int] | None:
    """('Big', 2) for 'Big-00002-of-00003.gguf' (llama.cpp's shard naming); None for a whole model."""
    match = _SHARD_NAME.match(filename)
    return (match.group("prefix"), int(match.group("number"))) if match else None


PROJECTOR_MARK = "mmproj"  # llama-server takes a file whose name holds this, in a model's folder, as its projector


def is_projector(filename: str) -> bool:
    return PROJECTOR_MARK in filename


def plan_set(filenames: list[str], set_name: str | None) -> tuple[str, int] | None:
    """The model set a run's files make, (name, how many files), or None for files installed each on its own.

    A projector (mmproj*.gguf) among the files makes them one set: the model's name (a single file without
    `.gguf`, or a split model's shard prefix) unless `set_name` gives it; a projector alone joins the installed
    model `set_name`. `set_name` without a projector makes the files one set too. ValueError for a run that
    cannot be one set.
    """
    projectors = [name for name in filenames if is_projector(name)]
    if not projectors and set_name is None:
        return None
    if len(projectors) > 1:
        raise ValueError(f"one projector per set, not {len(projectors)} ({', '.join(projectors)}): upload each "
                         "model with its projector in a run of its own")
    models = [name for name in filenames if not is_projector(name)]
    prefixes = {shard[0] for name in models if (shard := shard_of(name)) is not None}
    singles = [name for name in models if shard_of(name) is None]
    if len(singles) > 1 or (singles and prefixes) or len(prefixes) > 1:
        raise ValueError(f"a set holds one model (one file, or the shards of one split model), not {', '.join(models)}")
    if set_name is None:
        if not models:
            raise ValueError(f"{projectors[0]} alone: name the installed model it belongs to with --set NAME "
                             "(NAME.gguf, or the folder NAME/, on the server)")
        set_name = singles[0][:-len(".gguf")] if singles else next(iter(prefixes))
    if not set_name or set_name.lower().endswith(".gguf") or "/" in set_name or set_name.startswith((".", "-")):
        raise ValueError(f"--set {set_name!r}: a set is named as its folder on the server, without .gguf or /")
    return set_name, len(filenames)


def set_waiting(document: Mapping[str, object]) -> int:
    """How many files an upload's model set still waits for, per its status; 0 when it waits for none."""
    split_set = document.get("set")
    if document.get("state") in TERMINAL_STATES or not isinstance(split_set, Mapping):
        return 0
    waiting = split_set.get("waiting")
    return waiting if isinstance(waiting, int) else len(missing_shards(document))


def missing_shards(document: Mapping[str, object]) -> list[int]:
    """The shards an upload's split set still waits for (1-based), per its status; [] for whole models."""
    split_set = document.get("set")
    if document.get("state") in TERMINAL_STATES or not isinstance(split_set, Mapping):
        return []
    missing = split_set.get("missing")
    return [number for number in missing if isinstance(number, int)] if isinstance(missing, list) else []


def is_settled(document: Mapping[str, object], wait: bool, shards_coming: Collection[tuple[str, int]],
               sets_coming: Mapping[str, int] | None = None) -> bool:
    """Whether to stop asking about an upload.

    Final states settle it, and so does any state without --wait. A verified shard waits for the rest
    of its set; that wait ends only when nothing this run still sends could complete it (the user will
    upload the missing shards later), so a partial set does not keep the command waiting forever. A file of a
    named set (`size` in its set) waits while this run still sends as many files of that set as make it
    (`sets_coming`: set name -> files of this run not failed).
    """
    if document.get("state") in TERMINAL_STATES or not wait:
        return True
    split_set = document.get("set")
    if isinstance(split_set, Mapping) and isinstance(split_set.get("size"), int) and set_waiting(document):
        return (sets_coming or {}).get(str(split_set.get("prefix")), 0) < split_set["size"]
    missing = missing_shards(document)
    split_set = document.get("set")
    prefix = split_set.get("prefix") if isinstance(split_set, Mapping) else None
    return bool(missing) and not any((prefix, number) in shards_coming for number in missing)


def is_success(document: Mapping[str, object], wait: bool) -> bool:
    """Installed; or, when the run did not wait or the set lacks shards it was not given, not failed."""
    state = document.get("state")
    if state == FAILED:
        return False
    return state == INSTALLED or not wait or bool(set_waiting(document))


def describe_status(document: Mapping[str, object], fallback_name: str) -> str:
    """One line for an upload's status, e.g. 'installed x.gguf (llama, Q4_K_M, sha256 ab12cd34…)'."""
    state = str(document.get("state") or "unknown")
    name = str(document.get("final_name") or fallback_name)
    if state == FAILED:
        return f"failed {name}: {document.get('reason') or 'no reason given'}"
    split_set = document.get("set")
    if isinstance(split_set, Mapping) and isinstance(split_set.get("size"), int) and set_waiting(document):
        waiting = str(document.get("detail") or f"verified; waiting for {set_waiting(document)} more file(s)")
        return f"waiting {name}: {waiting} (set {split_set.get('prefix')!r})"
    missing = missing_shards(document)
    if missing:
        count = split_set.get("count") if isinstance(split_set, Mapping) else None
        listed = ", ".join(f"{number:05d}" for number in missing)
        of_count = f" of {count:05d}" if isinstance(count, int) else ""
        return f"waiting {name}: verified; its split set still needs shard(s) {listed}{of_count}"
    facts = gguf_facts(document.get("gguf"))
    if document.get("sha256"):
        facts.append(f"sha256 {str(document['sha256'])[:12]}…")
    return f"{state} {name}" + (f" ({', '.join(facts)})" if facts else "")


def gguf_facts(gguf: object) -> list[str]:
    """The GGUF facts worth a glance in one line: architecture and quantization, when the server knows them."""
    if not isinstance(gguf, Mapping):
        return []
    return [str(gguf[key]) for key in ("architecture", "quantization") if gguf.get(key)]
