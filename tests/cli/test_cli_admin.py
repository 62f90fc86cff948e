"""cli/admin.py: how `models`, `verify`, `load` and `unload` present the server's documents."""

from __future__ import annotations

import datetime

import pytest

from modeldrop.cli import admin

MODELS = {
    "models": [
        {"name": "Llama-3-8B-Q4_K_M.gguf", "kind": "file", "size": 4_920_000_000, "mtime": 1_700_000_000,
         "sha256": "ab" * 32, "gguf": {"architecture": "llama", "quantization": "Q4_K_M"}, "shards": [],
         "llama": {"id": "Llama-3-8B-Q4_K_M", "state": "loaded", "exit_code": None, "progress": None}},
        {"name": "big-00001-of-00003.gguf", "kind": "split", "size": 3 * 1024**3, "mtime": None,
         "gguf": {"architecture": "qwen2"}, "shards": ["a", "b", "c"]},
    ],
    "disk": {"free": 100 * 1024**3, "total": 1024**4},
}


def test_models_table_has_a_row_per_model_and_the_disk() -> None:
    lines = admin.format_models(MODELS).splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SIZE", "ARCH", "QUANT", "MODIFIED", "LLAMA-SERVER"]
    stamp = datetime.datetime.fromtimestamp(1_700_000_000).strftime("%Y-%m-%d %H:%M")
    assert lines[1].split() == ["Llama-3-8B-Q4_K_M.gguf", "file", "4.6", "GiB", "llama", "Q4_K_M", *stamp.split(),
                                "loaded"]
    assert lines[2].split() == ["big-00001-of-00003.gguf", "split/3", "3.0", "GiB", "qwen2", "-", "-", "-"]
    assert lines[3] == "disk: 100.0 GiB free of 1.0 TiB"
    assert lines[1].index("file") == lines[0].index("KIND")  # columns line up


def test_models_table_reads_the_servers_iso_times() -> None:
    """The server sends `mtime` as ISO 8601 UTC text; the table shows it in local time."""
    document = {"models": [{"name": "m.gguf", "kind": "file", "size": 1, "mtime": "2023-11-14T22:13:20Z"}]}
    stamp = datetime.datetime.fromtimestamp(1_700_000_000).strftime("%Y-%m-%d %H:%M")
    assert stamp in admin.format_models(document).splitlines()[1]


@pytest.mark.parametrize(("state", "shown"), [
    ({"state": "loaded"}, "loaded"),
    ({"state": "loading", "progress": 0.4}, "loading 40%"),
    ({"state": "failed", "exit_code": 1}, "failed (exit 1)"),
    ({"state": "absent"}, "not listed"),
    (None, "-"),
])
def test_llama_server_state_in_words(state: dict[str, object] | None, shown: str) -> None:
    assert admin.describe_state(state) == shown


def test_models_table_says_when_llama_server_is_unreachable() -> None:
    document = {"models": [{"name": "m.gguf", "kind": "file", "size": 1, "llama": None}],
                "llama_server": {"configured": True, "reachable": False, "error": "connection refused"}}
    lines = admin.format_models(document).splitlines()
    assert lines[1].split()[-1] == "-"
    assert lines[2] == "llama-server: not reachable (connection refused)"


def test_load_outcomes_are_sentences() -> None:
    assert admin.format_outcome("load", "m.gguf", {"id": "m", "state": "loaded"}) == (
        "loaded m.gguf in llama-server (model m)")
    assert "exited with code 1" in admin.format_outcome("load", "m.gguf", {"id": "m", "state": "failed",
                                                                           "exit_code": 1})
    assert admin.format_outcome("unload", "m.gguf", {"id": "m", "state": "unloaded"}) == (
        "unloaded m.gguf from llama-server (model m)")


def test_models_table_when_nothing_is_installed() -> None:
    assert admin.format_models({"models": [], "disk": {"free": 1024, "total": 2048}}) == (
        "no models installed\ndisk: 1.0 KiB free of 2.0 KiB")


def test_verify_ok_lists_the_facts() -> None:
    document = {"name": "m.gguf", "ok": True, "reason": None, "size": 2048, "sha256": "ef" * 32,
                "gguf": {"architecture": "llama", "quantization": "Q8_0"}}
    assert admin.format_verify(document, "m.gguf") == f"ok m.gguf (2.0 KiB, llama, Q8_0, sha256 {'ef' * 32})"


def test_verify_not_ok_gives_the_reason() -> None:
    document = {"name": "m.gguf", "ok": False, "reason": "truncated: 10 of 20 bytes", "size": 10}
    assert admin.format_verify(document, "m.gguf") == "not ok m.gguf: truncated: 10 of 20 bytes"
