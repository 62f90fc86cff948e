"""`modeldrop upload model.gguf mmproj-model-f16.gguf`: a model and its projector sent as one set, as a user runs it
(real CLI processes against a real server), and the rules the client follows to make the set (cli/tus.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modeldrop.cli import tus
from tests.ggufgen import write_model, write_projector, write_split_set
from tests.support.cli import run_cli
from tests.support.models import sha256_of
from tests.support.processes import ServerProcess

# ---------------------------------------------------------------- the set a run's files make


def test_a_projector_makes_the_run_one_set_named_as_its_model() -> None:
    assert tus.plan_set(["Vision-Q4_K_M.gguf", "mmproj-Vision-f16.gguf"], None) == ("Vision-Q4_K_M", 2)
    assert tus.plan_set(["Big-00001-of-00002.gguf", "Big-00002-of-00002.gguf", "mmproj-Big.gguf"], None) == ("Big", 3)
    assert tus.plan_set(["a.gguf", "mmproj-a.gguf"], "vision") == ("vision", 2)
    assert tus.plan_set(["mmproj-a.gguf"], "a") == ("a", 1)  # joins the installed model a
    assert tus.plan_set(["a.gguf"], "folder") == ("folder", 1)
    assert tus.plan_set(["a.gguf", "b.gguf"], None) is None  # two models, each on its own, as before


@pytest.mark.parametrize(("names", "set_name", "complaint"), [
    (["mmproj-a.gguf"], None, "--set NAME"),
    (["a.gguf", "mmproj-a.gguf", "mmproj-b.gguf"], None, "one projector per set"),
    (["a.gguf", "b.gguf", "mmproj-a.gguf"], None, "one model"),
    (["a.gguf", "Big-00001-of-00002.gguf", "mmproj-a.gguf"], None, "one model"),
    (["a.gguf", "mmproj-a.gguf"], "a.gguf", "without .gguf"),
])
def test_runs_that_cannot_be_one_set_are_refused_before_sending(names: list[str], set_name: str | None,
                                                               complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace(".", r"\.")):
        tus.plan_set(names, set_name)


def test_the_metadata_names_the_set_and_its_size() -> None:
    metadata = tus.upload_metadata("mmproj-a.gguf", None, "a", 2)
    assert "set YQ==" in metadata.split(",") and "set_size Mg==" in metadata.split(",")
    assert "set" not in tus.upload_metadata("a.gguf", None)


def test_a_waiting_file_of_a_named_set_waits_while_the_run_still_sends_the_rest() -> None:
    waiting = {"state": "verifying", "detail": "verified; waiting for its projector (mmproj)",
               "set": {"prefix": "a", "count": 0, "present": [], "missing": [], "size": 2, "files": ["a.gguf"],
                       "waiting": 1}}
    assert tus.set_waiting(waiting) == 1
    assert not tus.is_settled(waiting, True, set(), {"a": 2})  # the projector is still coming
    assert tus.is_settled(waiting, True, set(), {"a": 1})  # it failed: nothing this run sends completes the set
    assert tus.is_success(waiting, True)
    assert tus.describe_status(waiting, "a.gguf") == ("waiting a.gguf: verified; waiting for its projector (mmproj) "
                                                      "(set 'a')")


# ---------------------------------------------------------------- real runs


def test_upload_of_a_model_and_its_projector_installs_one_set(server: ServerProcess, tmp_path: Path,
                                                             client_env: dict[str, str]) -> None:
    model = write_model(tmp_path / "Vision-Q4_K_M.gguf")
    projector = write_projector(tmp_path / "mmproj-Vision-f16.gguf")

    result = run_cli(client_env, "upload", str(model), str(projector), "--server", server.url)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = sorted(result.stdout.strip().splitlines())
    assert lines[0].startswith("installed Vision-Q4_K_M/Vision-Q4_K_M.gguf (llama"), lines
    assert lines[1].startswith("installed Vision-Q4_K_M/mmproj-Vision-f16.gguf (clip"), lines
    folder = server.models_dir / "Vision-Q4_K_M"
    assert os.listdir(server.models_dir) == [folder.name]
    assert sha256_of(folder / model.name) == sha256_of(model)
    assert sha256_of(folder / projector.name) == sha256_of(projector)

    models = run_cli(client_env, "models", "--server", server.url)
    assert models.returncode == 0, models.stderr
    row = next(line for line in models.stdout.splitlines() if line.startswith("Vision-Q4_K_M "))
    assert "file+mmproj" in row, models.stdout
    verify = run_cli(client_env, "verify", "Vision-Q4_K_M", "--sha256", "--server", server.url)
    assert verify.returncode == 0 and verify.stdout.startswith("ok Vision-Q4_K_M"), verify.stdout + verify.stderr


def test_upload_with_a_set_name_of_shards_and_projector(server: ServerProcess, tmp_path: Path,
                                                        client_env: dict[str, str]) -> None:
    shards = write_split_set(tmp_path, "Big", 2)
    projector = write_projector(tmp_path / "mmproj-Big-f16.gguf")

    result = run_cli(client_env, "upload", *map(str, shards), str(projector), "--set", "big-vision",
                     "--server", server.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 3
    assert all(line.startswith("installed big-vision/") for line in result.stdout.splitlines()), result.stdout
    assert sorted(os.listdir(server.models_dir / "big-vision")) == sorted(p.name for p in (*shards, projector))


def test_a_projector_alone_joins_the_installed_model(server: ServerProcess, tmp_path: Path,
                                                     client_env: dict[str, str]) -> None:
    model = write_model(tmp_path / "Tiny.gguf")
    projector = write_projector(tmp_path / "mmproj-Tiny-f16.gguf")
    assert run_cli(client_env, "upload", str(model), "--server", server.url).returncode == 0
    assert os.listdir(server.models_dir) == ["Tiny.gguf"]

    alone = run_cli(client_env, "upload", str(projector), "--server", server.url)
    assert alone.returncode == 2 and "--set NAME" in alone.stderr, alone.stderr  # nothing sent

    result = run_cli(client_env, "upload", str(projector), "--set", "Tiny", "--server", server.url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("installed Tiny/mmproj-Tiny-f16.gguf"), result.stdout
    assert os.listdir(server.models_dir) == ["Tiny"]
    assert sorted(os.listdir(server.models_dir / "Tiny")) == ["Tiny.gguf", "mmproj-Tiny-f16.gguf"]


def test_a_projector_for_a_model_not_installed_is_refused_with_the_servers_reason(
        server: ServerProcess, tmp_path: Path, client_env: dict[str, str]) -> None:
    projector = write_projector(tmp_path / "mmproj-Nothing.gguf")
    result = run_cli(client_env, "upload", str(projector), "--set", "Nothing", "--server", server.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("failed mmproj-Nothing.gguf: no model named 'Nothing' is installed"), result.stdout
