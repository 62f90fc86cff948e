"""What the server already has of a file, found by its sha256: an unfinished upload of it, or an installed model.

A creation that declares the file's digest (tus `sha256` metadata, RUFH `Repr-Digest`) is looked up here before a
new upload is made (server/dedupe.py decides what to do with what is found):

- `find_resumable`: an upload of the same digest, name and length, by the same token (`token_fingerprint`), that
  is not failed nor installed: the client continues it instead of starting again at zero;
- `installed_as`: the name is installed already, with this digest (catalog record, file unchanged since);
- `installed_copies`: single-file models installed under any name with this digest and size, whose bytes can be
  linked to a new name.

A digest is trusted from the catalog record the finalizer wrote when it verified the file, and only while the file's
size and modification time are still those recorded: nothing here reads a model's bytes. Links in the models
directory are never followed (lstat, and the caller opens with O_NOFOLLOW).

`candidates` answers GET /api/lookup: the digests the server knows of files of one size, for a client that wants to
know whether hashing its copy is worth it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import stat as stat_module
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modeldrop.server import gguf
from modeldrop.server.catalog import Catalog, entry_name_is_safe
from modeldrop.server.store.filestore import FileStore, PlantedLink, read_nofollow
from modeldrop.server.store.info import UploadInfo
from modeldrop.server.store.lifecycle import State

# Keys the fingerprint of a bearer token, so the record never holds anything a token could be read back from
# without guessing it (and a fingerprint from another program's hash of the same token does not match).
_TOKEN_KEY = b"modeldrop upload owner v1"


def token_fingerprint(tokens: tuple[str, ...], headers: Mapping[str, str]) -> str | None:
    """Who created an upload, as far as resuming it goes: a keyed hash of the request's bearer token, or None
    when the server takes no tokens (anyone may then continue anyone's upload, as anyone may create one).

    Only for a request whose token was already accepted (Admission.check_auth).
    """
    if not tokens:
        return None
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return hmac.new(_TOKEN_KEY, credential.encode(), hashlib.sha256).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a creation says of its file: enough to find the same file on the server."""

    filename: str
    length: int
    sha256: str  # lowercase hex
    token_fp: str | None = None
    metadata_header: str = ""  # as sent, kept by an upload made for this claim (a link install's record)


@dataclasses.dataclass(frozen=True)
class InstalledFile:
    """A model file in the models directory whose digest the catalog knows (relative path, e.g. `x.gguf`)."""

    name: str
    size: int
    sha256: str
    mtime_ns: int | None
    upload_id: str | None


def _read_info(store: FileStore, upload_id: str, sha256: str) -> UploadInfo | None:
    """The upload's record when it could be of this digest; cheap for the others (no JSON is parsed)."""
    try:
        raw = read_nofollow(store.paths(upload_id).info)
    except (FileNotFoundError, PlantedLink, OSError):
        return None
    if sha256.encode() not in raw:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return UploadInfo.from_json(raw)
    return None


def find_resumable(store: FileStore, claim: Claim) -> UploadInfo | None:
    """The unfinished (or received but not yet installed) upload of exactly this file, by the same token.

    Same digest, name and length, and not a concatenation's part or final. Of several, the one furthest along.
    The offset is the record's: the caller takes a durable one (under the upload's lock) before answering.
    """
    best: tuple[tuple[int, int, float], UploadInfo] | None = None
    for upload_id in store.list_ids():
        info = _read_info(store, upload_id, claim.sha256)
        if info is None or info.sha256_expected != claim.sha256 or info.filename != claim.filename:
            continue
        if info.length != claim.length or info.concat is not None or info.token_fp != claim.token_fp:
            continue
        status = store.read_status(upload_id)
        if status is not None and status.terminal:
            continue
        try:
            info = store.load(upload_id)
        except Exception:  # noqa: BLE001 - gone meanwhile, or planted: not one to continue
            continue
        rank = (0 if status is None else 1, info.offset, info.created_at)  # received ones first, then progress
        if best is None or rank > best[0]:
            best = (rank, info)
    return None if best is None else best[1]


def _unchanged(catalog: Catalog, name: str, record: Mapping[str, Any]) -> os.stat_result | None:
    """The file's lstat when it is a regular file with the size and mtime its record has; else None."""
    try:
        stat = os.lstat(catalog.models_dir / name)
    except OSError:
        return None
    if not stat_module.S_ISREG(stat.st_mode):
        return None
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return stat


def installed_copies(catalog: Catalog, sha256: str | None = None, size: int | None = None) -> list[InstalledFile]:
    """Single-file models whose catalog record gives a digest still true of the file (size and mtime unchanged),
    of this digest and size when given; oldest install first."""
    found = []
    try:
        names = sorted(os.listdir(catalog.records_dir))
    except FileNotFoundError:
        return []
    for record_name in names:
        if not record_name.endswith(".json"):
            continue
        name = record_name[:-len(".json")]
        if not entry_name_is_safe(name) or not name.lower().endswith(".gguf"):
            continue
        record = _read_record(catalog.records_dir / record_name)
        digest = record.get("sha256")
        if not isinstance(digest, str) or (sha256 is not None and digest != sha256):
            continue
        if size is not None and record.get("size") != size:
            continue
        stat = _unchanged(catalog, name, record)
        if stat is None:
            continue
        found.append((float(record.get("installed_at") or 0), InstalledFile(
            name, stat.st_size, digest, stat.st_mtime_ns, record.get("upload_id"))))
    return [item for _, item in sorted(found, key=lambda pair: pair[0])]


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(read_nofollow(path))
    except (OSError, PlantedLink, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def installed_as(catalog: Catalog, filename: str, sha256: str, length: int) -> InstalledFile | None:
    """The installed model `filename` when it is this very file (digest and size), as its record says.

    A split model's shard is looked up in its set's folder, whose record keeps each shard's digest.
    """
    try:
        shard = gguf.parse_shard_name(filename)
    except gguf.GGUFError:
        return None
    if shard is None:
        record = _read_record(catalog.records_dir / f"{filename}.json") if entry_name_is_safe(filename) else {}
        stat = _unchanged(catalog, filename, record) if record.get("sha256") == sha256 else None
        if stat is None or stat.st_size != length:
            return None
        return InstalledFile(filename, length, sha256, stat.st_mtime_ns, record.get("upload_id"))
    record = _read_record(catalog.records_dir / f"{shard.prefix}.json")
    digests = record.get("shard_sha256")
    if not isinstance(digests, dict) or digests.get(filename) != sha256:
        return None
    try:
        stat = os.lstat(catalog.models_dir / shard.prefix / filename)
    except OSError:
        return None
    if not stat_module.S_ISREG(stat.st_mode) or stat.st_size != length:
        return None
    return InstalledFile(f"{shard.prefix}/{filename}", length, sha256, None, None)


def candidates(store: FileStore, catalog: Catalog, size: int, token_fp: str | None) -> list[dict[str, Any]]:
    """What the server knows of files of exactly `size` bytes: installed models with their digest, and uploads
    (by this token) that declared one. For GET /api/lookup."""
    found: list[dict[str, Any]] = [{"sha256": item.sha256, "where": "installed", "name": item.name}
                                   for item in installed_copies(catalog, size=size)]
    for info in store.open_uploads():
        if (info.length != size or info.sha256_expected is None or info.concat is not None
                or info.token_fp != token_fp):
            continue
        status = store.read_status(info.id)
        if status is not None and status.state is State.FAILED:
            continue
        found.append({"sha256": info.sha256_expected, "where": "upload", "name": info.filename,
                      "offset": info.offset})
    return found
