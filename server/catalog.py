"""What is in the models directory: single models, split sets, their GGUF facts and known digests.

Files placed there by hand are listed too; their facts are read from their headers and cached by
(size, mtime). The finalizer records what it installed (sha256, upload, time) in `<staging>/catalog/`,
outside the directory llama-server scans.

Nothing here follows a symbolic link inside the models directory: the server never makes one, so a link
there was planted, and following it would let `verify?sha256=1` read (and hash) any file the server may
read. Links are left out of the listing and refused by name; files are opened with O_NOFOLLOW, one path
component at a time, so a link swapped in after a check is refused too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from modeldrop.server import errors, gguf
from modeldrop.server.store.filestore import (
    fsync_directory,
    make_directories,
    remove_entry,
    write_atomic,
)

_HASH_BLOCK = 8 * 1024 * 1024


def entry_name_is_safe(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(".")


def check_requested_name(name: str) -> None:
    """A name from a request that no file can have is the client's mistake (400), not a failed lookup.

    The operating system would refuse it anyway (a NUL, a name over 255 bytes), as an error that is no
    answer for a client.
    """
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise errors.BadRequest("a model name cannot contain control characters (such as NUL or a line break)")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise errors.BadRequest("a model name is at most 255 bytes long")
    if any(0xD800 <= ord(char) <= 0xDFFF for char in name):
        raise errors.BadRequest("a model name must be valid UTF-8")


def open_inside(root: Path, *parts: str) -> BinaryIO:
    """Opens root/parts... for reading without following a link at any component below root.

    root itself is the operator's setting and may be a link. Raises OSError (ELOOP for a link) and refuses
    anything but a regular file at the end.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC
    directory = os.open(root, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, flags | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = inner
        # O_NONBLOCK: a FIFO swapped in after the check must not hang the open (no effect on regular files)
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb")


def sha256_of(path: Path, on_progress: Callable[[int], None] | None = None) -> str:
    """The digest of a file the server made; the worker passes /proc/self/fd/N, a link it means to follow."""
    with open(path, "rb", buffering=0) as source:
        return sha256_of_file(source, on_progress)


def sha256_of_file(source: BinaryIO, on_progress: Callable[[int], None] | None = None) -> str:
    """One sequential read; the pages read are dropped so hashing a 50 GB file does not fill the cache."""
    digest = hashlib.sha256()
    done = 0
    source.seek(0)
    while block := source.read(_HASH_BLOCK):
        digest.update(block)
        done += len(block)
        with contextlib.suppress(OSError):
            os.posix_fadvise(source.fileno(), 0, done, os.POSIX_FADV_DONTNEED)
        if on_progress is not None:
            on_progress(done)
    return digest.hexdigest()


def verify_open(file: BinaryIO) -> gguf.GGUFFacts:
    """gguf.verify_file for a file already opened: the header is sound and the length is what it says."""
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    facts = gguf.parse_header(file.read, size)
    gguf.check_complete(facts, size)
    return facts


class Catalog:
    def __init__(self, models_dir: Path, staging_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.records_dir = Path(staging_dir) / "catalog"
        self.trash_dir = Path(staging_dir) / "trash"
        self._facts: dict[str, tuple[int, int, dict[str, Any] | None, str | None]] = {}
        self._lock = threading.Lock()

    # -- records written at install -----------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        return self.records_dir / f"{name}.json"

    def read_record(self, name: str) -> dict[str, Any]:
        try:
            return dict(json.loads(self._record_path(name).read_bytes()))
        except (FileNotFoundError, ValueError):
            return {}

    def remove_record(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(name).unlink()

    def write_record(self, name: str, **fields: Any) -> None:
        make_directories(self.records_dir)
        record = self.read_record(name)
        record.update(fields)
        write_atomic(self._record_path(name), json.dumps(record, sort_keys=True).encode(), durable=False)

    # -- facts --------------------------------------------------------------------------------------

    def facts_of(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """(GGUF facts, problem) for one file in the models directory, from cache while its size and mtime
        are unchanged. OSError for a link or a file that went away."""
        with open_inside(self.models_dir, *path.relative_to(self.models_dir).parts) as file:
            stat = os.fstat(file.fileno())
            key = str(path)
            with self._lock:
                cached = self._facts.get(key)
            if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
                return cached[2], cached[3]
            facts: dict[str, Any] | None = None
            problem = None
            try:
                facts = public_facts(verify_open(file))
            except gguf.GGUFError as exc:
                problem = exc.reason
            except OSError as exc:
                problem = f"cannot read the file: {exc.strerror}"
        with self._lock:
            self._facts[key] = (stat.st_size, stat.st_mtime_ns, facts, problem)
        return facts, problem

    # -- listing ------------------------------------------------------------------------------------

    def entry(self, name: str) -> dict[str, Any] | None:
        """The model `name` in the models directory, or None (not there, not a model, or a link).

        A folder is one model llama-server loads from it: a split model's shards (kind "split"), or a model and
        its projector (kind "set"); `parts` lists its files with the part each is, as llama-server's scan reads
        their names: "shard", "model" or "projector".
        """
        if not entry_name_is_safe(name):
            return None
        path = self.models_dir / name
        try:
            stat = os.lstat(path)
        except FileNotFoundError:
            return None
        record = self.read_record(name)
        if stat_module.S_ISDIR(stat.st_mode):
            return self._directory_entry(name, path, stat, record)
        if not name.lower().endswith(".gguf") or not stat_module.S_ISREG(stat.st_mode):
            return None
        facts, problem = self.facts_of(path)
        if problem is None and facts is not None and (facts.get("type") == gguf.PROJECTOR_TYPE
                                                      or facts.get("architecture") == gguf.PROJECTOR_ARCHITECTURE):
            problem = ("a multimodal projector on its own: llama-server uses it only beside its model, in the "
                       "model's folder (upload it with `set` metadata naming the model)")
        unchanged = record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
        sha256 = record.get("sha256") if unchanged else None
        return {
            "name": name, "kind": "file", "size": stat.st_size, "mtime": iso(stat.st_mtime),
            "sha256": sha256, "gguf": facts, "shards": None, "projector": None,
            "parts": [{"name": name, "role": "model", "size": stat.st_size, "sha256": sha256}],
            "status": "ok" if problem is None else "invalid", "problem": problem,
            "installed_at": iso(record.get("installed_at")), "upload_id": record.get("upload_id"),
            "llama_server": record.get("llama_server"),
        }

    def _shard_files(self, path: Path) -> Iterator[os.DirEntry[str]]:
        with os.scandir(path) as children:
            for child in children:
                if child.is_file(follow_symlinks=False) and child.name.lower().endswith(".gguf"):
                    yield child

    def _directory_entry(self, name: str, path: Path, stat: os.stat_result,
                         record: dict[str, Any]) -> dict[str, Any] | None:
        files = sorted(self._shard_files(path), key=lambda child: (part_role(child.name) == "projector", child.name))
        if not files:
            return None
        digests = record.get("shard_sha256") or {}
        parts = []
        model_facts = projector = None
        problem = None
        loaded = []
        for file in files:
            facts, file_problem = self.facts_of(path / file.name)
            role = part_role(file.name)
            part = {"name": file.name, "role": role, "size": file.stat(follow_symlinks=False).st_size,
                    "sha256": digests.get(file.name)}
            parts.append(part)
            problem = problem or (f"{file.name}: {file_problem}" if file_problem else None)
            if role == "projector":
                projector = {**part, "gguf": facts}
            elif model_facts is None and (role == "model" or "-00001-of-" in file.name):
                model_facts = facts
            if facts is not None:
                loaded.append((file.name, facts))
        if problem is None and len(loaded) == len(files):
            problem = self._set_problem(path)
        shards = [{"name": part["name"], "size": part["size"]} for part in parts if part["role"] == "shard"]
        return {
            "name": name, "kind": "split" if len(shards) == len(parts) else "set",
            "size": sum(part["size"] for part in parts), "mtime": iso(stat.st_mtime), "sha256": None,
            "gguf": model_facts, "shards": shards or None, "projector": projector, "parts": parts,
            "shard_sha256": record.get("shard_sha256"),
            "status": "ok" if problem is None else "invalid", "problem": problem,
            "installed_at": iso(record.get("installed_at")), "upload_id": record.get("upload_id"),
            "llama_server": record.get("llama_server"),
        }

    def _set_problem(self, path: Path) -> str | None:
        """Whether the folder's files make one model llama-server loads (gguf.check_model_set), from the headers."""
        files = []
        for child in sorted(self._shard_files(path), key=lambda child: child.name):
            try:
                with open_inside(self.models_dir, path.name, child.name) as file:
                    files.append((child.name, verify_open(file)))
            except (OSError, gguf.GGUFError):
                return None  # the file's own problem is reported for it
        try:
            gguf.check_model_set(files)
        except gguf.GGUFError as exc:
            return exc.reason
        return None

    def entries(self) -> list[dict[str, Any]]:
        try:
            names = sorted(os.listdir(self.models_dir), key=str.lower)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            with contextlib.suppress(OSError):
                item = self.entry(name)
                if item is not None:
                    found.append(item)
        return found

    def listing(self) -> dict[str, Any]:
        models_stat = os.statvfs(self.models_dir)
        staging_stat = os.statvfs(self.records_dir.parent)
        return {
            "models": self.entries(),
            "disk": {"free": models_stat.f_bavail * models_stat.f_frsize,
                     "total": models_stat.f_blocks * models_stat.f_frsize,
                     "staging_free": staging_stat.f_bavail * staging_stat.f_frsize},
        }

    def describe(self, name: str) -> dict[str, Any]:
        check_requested_name(name)
        if entry_name_is_safe(name) and (self.models_dir / name).is_symlink():
            raise errors.Forbidden(f"{name[:120]!r} in the models directory is a symbolic link, which modeldrop "
                                   "neither follows nor removes; replace it with the file, or remove it by hand")
        item = self.entry(name)
        if item is None:
            raise errors.NotFound(f"no model named {name[:120]!r} in the models directory")
        return item

    # -- verify and delete --------------------------------------------------------------------------

    def verify(self, name: str, with_sha256: bool = False) -> dict[str, Any]:
        """Re-checks size and structure on disk now (and the sha256, on request); a folder's files together too."""
        item = self.describe(name)
        folder = item["kind"] != "file"
        files = [(name, part["name"]) for part in item["parts"]] if folder else [(name,)]
        problems = []
        facts_by_file = []
        digests: dict[str, str] = {}
        for parts in files:
            shown = parts[-1]
            try:
                with open_inside(self.models_dir, *parts) as file:
                    try:
                        facts_by_file.append((shown, verify_open(file)))
                    except gguf.GGUFError as exc:
                        problems.append(f"{shown}: {exc.reason}" if folder else exc.reason)
                    if with_sha256:
                        digests[shown] = sha256_of_file(file)
            except OSError as exc:
                problems.append(f"{shown} cannot be read: {exc.strerror}")
        if folder and not problems:
            try:
                gguf.check_model_set(facts_by_file)
            except gguf.GGUFError as exc:
                problems.append(exc.reason)
        elif not folder and item["problem"] and not problems:
            problems.append(item["problem"])  # a projector on its own
        result: dict[str, Any] = {"name": name, "kind": item["kind"], "size": item["size"], "gguf": item["gguf"],
                                  "parts": item["parts"]}
        if with_sha256:
            record = self.read_record(name)
            if folder:
                result["shard_sha256"] = digests
                expected = record.get("shard_sha256") or {}
                changed = [part for part, value in digests.items() if expected.get(part) not in (None, value)]
                if changed:
                    problems.append(f"sha256 differs from the one recorded at install for {', '.join(changed)}")
            elif name in digests:
                actual = digests[name]
                result["sha256"] = actual
                if record.get("sha256") and record["sha256"] != actual:
                    problems.append(f"sha256 is {actual}, but {record['sha256']} was recorded at install: the file "
                                    "changed on disk")
        result["ok"] = not problems
        result["reason"] = "; ".join(problems) or None
        return result

    def delete(self, name: str) -> str:
        """Takes the entry out of the models directory in one rename, then frees the space."""
        self.describe(name)
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        doomed = self.trash_dir / f"{name}.{secrets.token_hex(4)}"
        os.rename(self.models_dir / name, doomed)
        fsync_directory(self.models_dir)
        remove_entry(doomed)
        self.remove_record(name)
        return name


def public_facts(facts: gguf.GGUFFacts) -> dict[str, Any]:
    return {
        "architecture": facts.architecture, "name": facts.name, "size_label": facts.size_label,
        "file_type": facts.file_type, "quantization": facts.quantization, "context_length": facts.context_length,
        "parameter_count": facts.parameter_count, "tensor_count": facts.tensor_count, "version": facts.version,
        "split_no": facts.split_no, "split_count": facts.split_count, "type": facts.general_type,
    }


def part_role(filename: str) -> str:
    """The part a file of a model's folder is, as llama-server's scan reads its name: projector, shard or model."""
    if gguf.is_projector_name(filename):
        return "projector"
    try:
        return "shard" if gguf.parse_shard_name(filename) is not None else "model"
    except gguf.GGUFError:
        return "model"


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC, for JSON."""
    if not timestamp:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
