"""server.catalog in process: what is in the models directory, its GGUF facts, verify and delete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modeldrop.server import errors, gguf
from modeldrop.server.catalog import Catalog
from tests.ggufgen import truncate_by, write_model, write_split_set
from tests.support.models import sha256_of


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    (tmp_path / "models").mkdir()
    (tmp_path / "staging").mkdir()
    return Catalog(tmp_path / "models", tmp_path / "staging")


def test_catalog_hand_placed_file_listed_with_header_facts(catalog: Catalog) -> None:
    write_model(catalog.models_dir / "by-hand.gguf", context_length=4096)
    (catalog.models_dir / "notes.txt").write_text("not a model")
    (catalog.models_dir / "upload.gguf.part").write_bytes(b"GGUF")
    [entry] = catalog.entries()
    assert (entry["name"], entry["kind"], entry["status"], entry["problem"]) == ("by-hand.gguf", "file", "ok", None)
    assert entry["gguf"]["architecture"] == "llama"
    assert entry["gguf"]["context_length"] == 4096
    assert entry["sha256"] is None  # not installed by modeldrop: no recorded digest


def test_catalog_facts_cached_until_size_or_mtime_changes(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_model(catalog.models_dir / "m.gguf", context_length=4096)
    calls = []
    real = gguf.parse_header
    monkeypatch.setattr(gguf, "parse_header", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert catalog.facts_of(path)[0]["context_length"] == 4096
    assert catalog.facts_of(path)[0]["context_length"] == 4096
    assert len(calls) == 1
    write_model(path, context_length=8192)  # same size, new content
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert catalog.facts_of(path)[0]["context_length"] == 8192
    assert len(calls) == 2


def test_catalog_split_directory_is_one_model(catalog: Catalog) -> None:
    directory = catalog.models_dir / "set"
    directory.mkdir()
    shards = write_split_set(directory, "set", 3)
    [entry] = catalog.entries()
    assert entry["kind"] == "split" and entry["status"] == "ok", entry
    assert [s["name"] for s in entry["shards"]] == [p.name for p in shards]
    assert entry["size"] == sum(p.stat().st_size for p in shards)
    assert entry["gguf"]["split_no"] == 0 and entry["gguf"]["architecture"] == "llama"
    assert catalog.verify("set")["ok"] is True
    shards[1].unlink()
    result = catalog.verify("set")
    assert result["ok"] is False and "00002" in result["reason"], result


def test_catalog_verify_truncated_on_disk(catalog: Catalog) -> None:
    path = write_model(catalog.models_dir / "m.gguf")
    assert catalog.verify("m.gguf") == {**catalog.verify("m.gguf"), "ok": True, "reason": None}
    truncate_by(path, 10)
    result = catalog.verify("m.gguf")
    assert result["ok"] is False
    assert result["reason"].startswith("truncated"), result


def test_catalog_verify_sha256_against_install_record(catalog: Catalog) -> None:
    path = write_model(catalog.models_dir / "m.gguf")
    stat = path.stat()
    catalog.write_record("m.gguf", sha256=sha256_of(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    assert catalog.entry("m.gguf")["sha256"] == sha256_of(path)
    result = catalog.verify("m.gguf", with_sha256=True)
    assert (result["ok"], result["sha256"]) == (True, sha256_of(path))
    with open(path, "r+b") as file:  # flip a byte inside the tensor data: same size, still a valid header
        file.seek(-1, os.SEEK_END)
        byte = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([byte[0] ^ 0xFF]))
    assert catalog.verify("m.gguf")["ok"] is True  # the structure cannot see it
    result = catalog.verify("m.gguf", with_sha256=True)
    assert result["ok"] is False and "recorded at install" in result["reason"], result


def test_catalog_delete_moves_out_in_one_step(catalog: Catalog) -> None:
    write_model(catalog.models_dir / "m.gguf")
    catalog.write_record("m.gguf", sha256="x")
    directory = catalog.models_dir / "set"
    directory.mkdir()
    write_split_set(directory, "set", 2)
    assert catalog.delete("m.gguf") == "m.gguf"
    assert catalog.delete("set") == "set"
    assert os.listdir(catalog.models_dir) == []
    assert catalog.read_record("m.gguf") == {}
    assert os.listdir(catalog.trash_dir) == []


@pytest.mark.parametrize("name", ["..", "../staging", ".", "set/set-00001-of-00002.gguf", ".hidden.gguf", "",
                                  "missing.gguf", "notes.txt"])
def test_catalog_unsafe_or_unknown_names_not_found(catalog: Catalog, name: str) -> None:
    directory = catalog.models_dir / "set"
    directory.mkdir()
    write_split_set(directory, "set", 2)
    write_model(catalog.models_dir / ".hidden.gguf")
    (catalog.models_dir / "notes.txt").write_text("x")
    write_model(catalog.records_dir.parent / "outside.gguf")
    for action in (catalog.describe, catalog.verify, catalog.delete):
        with pytest.raises(errors.NotFound):
            action(name)
    assert sorted(os.listdir(catalog.models_dir)) == [".hidden.gguf", "notes.txt", "set"]
    assert len(os.listdir(directory)) == 2
    assert (catalog.records_dir.parent / "outside.gguf").exists()


@pytest.fixture
def planted(catalog: Catalog, tmp_path: Path) -> Path:
    """Links in models/ that nobody but a hand made: to a model outside, to a folder of shards outside, and a
    shard inside a real set that points outside."""
    (tmp_path / "outside").mkdir()
    secret = write_model(tmp_path / "outside" / "secret.gguf")
    (catalog.models_dir / "link.gguf").symlink_to(secret)
    outside_set = tmp_path / "outside" / "oset"
    outside_set.mkdir()
    write_split_set(outside_set, "oset", 2)
    (catalog.models_dir / "oset").symlink_to(outside_set)
    real = catalog.models_dir / "mixed"
    real.mkdir()
    shards = write_split_set(real, "mixed", 2)
    shards[1].unlink()
    shards[1].symlink_to(outside_set / "oset-00002-of-00002.gguf")
    return secret


def test_catalog_never_follows_a_link_it_did_not_make(catalog: Catalog, planted: Path) -> None:
    names = {entry["name"]: entry for entry in catalog.entries()}
    assert "link.gguf" not in names and "oset" not in names
    assert [shard["name"] for shard in names["mixed"]["shards"]] == ["mixed-00001-of-00002.gguf"]
    for name in ("link.gguf", "oset"):
        for action in (catalog.describe, catalog.verify, catalog.delete):
            with pytest.raises(errors.HTTPError) as caught:
                action(name)
            assert 400 <= caught.value.status < 500 and "link" in caught.value.message
        with pytest.raises(errors.HTTPError):
            catalog.verify(name, with_sha256=True)
    result = catalog.verify("mixed", with_sha256=True)
    assert result["ok"] is False and "oset-00002" not in str(result.get("shard_sha256"))
    assert (catalog.models_dir / "link.gguf").is_symlink() and planted.exists()


def test_catalog_answers_name_no_directory(catalog: Catalog, tmp_path: Path) -> None:
    import json

    write_model(catalog.models_dir / "m.gguf")
    directory = catalog.models_dir / "set"
    directory.mkdir()
    write_split_set(directory, "set", 2)
    shown = json.dumps([catalog.listing(), catalog.describe("m.gguf"), catalog.verify("set", with_sha256=True)])
    assert str(tmp_path) not in shown
