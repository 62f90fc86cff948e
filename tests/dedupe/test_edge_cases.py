"""What a digest never buys: a failed upload is not continued, a link planted in models/ is not followed, a file
the filesystem will not link is uploaded as usual; and what it does for a split model's shard (the app in process,
with its embedded finalizer)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from modeldrop.server import dedupe
from tests.ggufgen import truncate_by, write_model, write_split_set
from tests.support.app import InProcess, in_process
from tests.support.models import sha256_of

app = in_process()


def install(app: InProcess, path: Path, name: str | None = None) -> str:
    location = app.tus.upload_file(path, filename=name)
    assert app.tus.wait_installed(location)["state"] == "installed"
    return location


def creation(app: InProcess, path: Path, name: str, digest: str) -> dict[str, str]:
    response = app.tus.create(path.stat().st_size, metadata={"filename": name, "sha256": digest})
    assert response.status_code == 201, response.text
    return dict(response.headers)


def test_a_failed_upload_is_not_continued(app: InProcess, tmp_path: Path) -> None:
    broken = truncate_by(write_model(tmp_path / "Broken.gguf", tensors=2, tensor_elems=4096), 1000)
    digest = sha256_of(broken)
    location = app.tus.upload_file(broken, sha256=digest)
    assert app.tus.wait_state(location, "installed", "failed")["state"] == "failed"
    headers = creation(app, broken, broken.name, digest)
    assert "modeldrop-match" not in headers and headers["location"] != location


def test_a_link_planted_in_models_is_never_linked(app: InProcess, tmp_path: Path) -> None:
    model = write_model(tmp_path / "Real.gguf", tensors=2, tensor_elems=4096)
    digest = sha256_of(model)
    install(app, model)
    # someone replaces the installed file by a link to a file of theirs, record and all left as they were
    record = app.staging_dir / "catalog" / "Real.gguf.json"
    stat = os.stat(app.models_dir / "Real.gguf")
    elsewhere = tmp_path / "theirs.gguf"
    os.rename(app.models_dir / "Real.gguf", elsewhere)
    os.symlink(elsewhere, app.models_dir / "Real.gguf")
    os.utime(app.models_dir / "Real.gguf", ns=(stat.st_atime_ns, stat.st_mtime_ns), follow_symlinks=False)
    assert json.loads(record.read_text())["sha256"] == digest
    headers = creation(app, model, "Copy.gguf", digest)
    assert "modeldrop-match" not in headers
    assert not (app.models_dir / "Copy.gguf").exists()


def test_where_neither_a_hard_link_nor_a_reflink_is_allowed_the_file_is_uploaded(
        app: InProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write_model(tmp_path / "Owned-Elsewhere.gguf", tensors=2, tensor_elems=4096)
    digest = sha256_of(model)
    install(app, model)

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")  # fs.protected_hardlinks, another owner's file

    monkeypatch.setattr(dedupe.os, "link", refused)
    monkeypatch.setattr(dedupe.fcntl, "ioctl", lambda *args: refused())  # and no reflinks (ext4)
    headers = creation(app, model, "Copy.gguf", digest)
    assert "modeldrop-match" not in headers and headers.get("upload-offset", "0") == "0"
    assert not (app.models_dir / "Copy.gguf").exists()
    assert not [path for path in (app.staging_dir / "uploads").glob("*.bin") if path.stat().st_nlink > 1]
    location = headers["location"]
    assert app.tus.send_file(location, model).status_code == 204  # uploaded instead, and installed
    assert app.tus.wait_installed(location)["final_name"] == "Copy.gguf"


def test_a_split_models_shard(app: InProcess, tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, "Split", 2, tensor_elems=4096)
    digests = [sha256_of(shard) for shard in shards]
    first = app.tus.upload_file(shards[0], sha256=digests[0])
    assert app.tus.wait_state(first, "verifying", "installed", "failed")["state"] == "verifying"  # waits for 2
    # the staged shard, verified, is found by its digest: nothing to send again
    headers = creation(app, shards[0], shards[0].name, digests[0])
    assert headers["modeldrop-match"] == "resumed" and headers["location"] == first
    assert headers["upload-offset"] == str(shards[0].stat().st_size)
    install(app, shards[1])
    # once installed, the shard is answered as installed; a shard is never linked on its own under another name
    headers = creation(app, shards[1], shards[1].name, digests[1])
    assert headers["modeldrop-match"] == "installed"
    assert app.tus.status(headers["location"])["final_name"] == f"Split/{shards[1].name}"
    renamed = "Other-00002-of-00002.gguf"
    assert "modeldrop-match" not in creation(app, shards[1], renamed, digests[1])
