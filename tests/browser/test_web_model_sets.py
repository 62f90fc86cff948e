"""The page with a multimodal model: a model and its projector dropped together go to the server as one set and are
installed together, as one model with its parts listed; the page's pairing of projectors with models (sets.js)."""

from __future__ import annotations

import base64
import filecmp
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import card, drop_files, missing_prerequisite, wait_for_state
from tests.ggufgen import write_model, write_projector
from tests.support.processes import REPO, ServerProcess

_missing = missing_prerequisite()
if _missing:
    pytest.skip(f"browser tests need it: {_missing}", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Any]


def test_a_dropped_model_and_projector_are_installed_as_one_model(server: ServerProcess, open_page: OpenPage,
                                                                  tmp_path: Path) -> None:
    model = write_model(tmp_path / "Vision-2B-Q4_K_M.gguf", tensors=3, tensor_elems=4096)
    projector = write_projector(tmp_path / "mmproj-Vision-2B-f16.gguf")
    page = open_page(server)
    sent: list[dict[str, str]] = []
    page.on("request", lambda request: sent.append(request.headers) if request.method == "POST"
            and "/files/" in request.url else None)

    drop_files(page, model, projector)  # a real drop on the Dashboard
    for path in (model, projector):
        expect(card(page, path.name)).to_have_attribute("data-state", "ready")
    page.get_by_test_id("start-upload").click()
    for path in (model, projector):
        wait_for_state(card(page, path.name), "installed")

    metadata = [dict(pair.split(" ") for pair in headers["upload-metadata"].split(",")) for headers in sent]
    assert [base64.b64decode(item["set"]).decode() for item in metadata] == ["Vision-2B-Q4_K_M"] * 2
    assert [base64.b64decode(item["set_size"]).decode() for item in metadata] == ["2", "2"]
    expect(card(page, model.name)).to_contain_text("Installed as Vision-2B-Q4_K_M/Vision-2B-Q4_K_M.gguf")
    expect(card(page, projector.name)).to_contain_text("projector")

    row = page.get_by_test_id("model-row-Vision-2B-Q4_K_M")
    expect(row).to_have_attribute("data-kind", "set")
    expect(page.locator("[data-testid^=model-row-]")).to_have_count(1)
    toggle = page.get_by_test_id("shards-toggle-Vision-2B-Q4_K_M")
    expect(toggle).to_have_text("Model + projector")
    toggle.click()
    listed = page.get_by_test_id("shards-Vision-2B-Q4_K_M")
    expect(listed.get_by_test_id(f"shard-{model.name}")).to_have_attribute("data-role", "model")
    expect(listed.get_by_test_id(f"shard-{projector.name}")).to_have_attribute("data-role", "projector")
    expect(listed.get_by_test_id(f"shard-{projector.name}")).to_contain_text("projector (mmproj)")
    folder = server.models_dir / "Vision-2B-Q4_K_M"
    for path in (model, projector):
        assert filecmp.cmp(folder / path.name, path, shallow=False)

    page.get_by_test_id("delete-Vision-2B-Q4_K_M").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("the model and its projector")
    page.get_by_test_id("confirm-ok").click()
    expect(row).to_have_count(0)
    assert not folder.exists()


PLAN = """
import { planSets } from %s
const files = JSON.parse(process.argv[1]).map((name, id) => ({ id: String(id), name }))
const { sets, lone } = planSets(files, JSON.parse(process.argv[2]))
console.log(JSON.stringify({ sets: sets.map((s) => [s.name, s.files.map((f) => f.name)]), lone: lone.map((f) => f.name) }))
"""


def plan(*names: str, installed: tuple[str, ...] = ()) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    source = PLAN % json.dumps(str(REPO / "web" / "src" / "sets.js"))
    result = subprocess.run([node, "--input-type=module", "-e", source, json.dumps(list(names)),
                             json.dumps(list(installed))],
                            capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(result.stdout))


def test_the_page_pairs_each_projector_with_its_model() -> None:
    assert plan("a.gguf", "mmproj-whatever.gguf") == {"sets": [["a", ["a.gguf", "mmproj-whatever.gguf"]]],
                                                      "lone": []}
    assert plan("Big-00001-of-00002.gguf", "Big-00002-of-00002.gguf", "mmproj-Big-f16.gguf")["sets"] == [
        ["Big", ["Big-00001-of-00002.gguf", "Big-00002-of-00002.gguf", "mmproj-Big-f16.gguf"]]]
    two = plan("Qwen2-VL-2B-Q4_K_M.gguf", "gemma-3-4b-it-Q4_K_M.gguf", "mmproj-gemma-3-4b-it-f16.gguf",
               "mmproj-Qwen2-VL-2B-f16.gguf")
    assert sorted(two["sets"]) == [["Qwen2-VL-2B-Q4_K_M", ["Qwen2-VL-2B-Q4_K_M.gguf", "mmproj-Qwen2-VL-2B-f16.gguf"]],
                                   ["gemma-3-4b-it-Q4_K_M", ["gemma-3-4b-it-Q4_K_M.gguf",
                                                             "mmproj-gemma-3-4b-it-f16.gguf"]]]
    assert plan("mmproj-alone.gguf") == {"sets": [], "lone": ["mmproj-alone.gguf"]}
    assert plan("a.gguf", "b.gguf") == {"sets": [], "lone": []}  # no projector: each model on its own
    # a projector alone joins the installed model most like it, if one is
    assert plan("mmproj-Qwen2-VL-2B-f16.gguf", installed=("Qwen2-VL-2B-Q4_K_M", "gemma-3-4b-it-Q4_K_M")) == {
        "sets": [["Qwen2-VL-2B-Q4_K_M", ["mmproj-Qwen2-VL-2B-f16.gguf"]]], "lone": []}
    assert plan("mmproj-Qwen2-VL-2B-f16.gguf", installed=("Qwen2-VL-2B-Q4_K_M", "Qwen2-VL-2B-Q8_0"))["lone"] == [
        "mmproj-Qwen2-VL-2B-f16.gguf"]  # two equally like it: the page does not guess


def test_a_projector_dropped_alone_joins_the_installed_model(server: ServerProcess, open_page: OpenPage,
                                                             tmp_path: Path) -> None:
    model = write_model(tmp_path / "Vision-2B-Q4_K_M.gguf", tensors=3, tensor_elems=4096)
    projector = write_projector(tmp_path / "mmproj-Vision-2B-f16.gguf")
    page = open_page(server)
    drop_files(page, model)
    page.get_by_test_id("start-upload").click()
    wait_for_state(card(page, model.name), "installed")
    expect(page.get_by_test_id("model-row-Vision-2B-Q4_K_M.gguf")).to_have_attribute("data-kind", "file")

    drop_files(page, projector)
    page.get_by_test_id("start-upload").click()
    wait_for_state(card(page, projector.name), "installed")
    expect(card(page, projector.name)).to_contain_text("Installed as Vision-2B-Q4_K_M/mmproj-Vision-2B-f16.gguf")
    row = page.get_by_test_id("model-row-Vision-2B-Q4_K_M")
    expect(row).to_have_attribute("data-kind", "set")
    expect(page.locator("[data-testid^=model-row-]")).to_have_count(1)
    assert sorted(path.name for path in (server.models_dir / "Vision-2B-Q4_K_M").iterdir()) == sorted(
        [model.name, projector.name])
