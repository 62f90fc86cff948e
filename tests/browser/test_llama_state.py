"""The page shows what llama-server says of each model, live, and its Load now / Unload buttons work.

Real Chromium, the built page, a real `modeldrop serve` and the real llama-server binary (skipped where
scripts/build-llama-server.sh has not built it) loading a tiny random-weight llama model uploaded through
the page.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import add_files, card, missing_prerequisite, save_screenshot, wait_for_state
from tests.ggufgen import write_model, write_runnable_llama
from tests.support.llama import LlamaServer
from tests.support.processes import ServerProcess, wait_for

_missing = missing_prerequisite()
if _missing:
    pytest.skip(f"browser tests need it: {_missing}", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Any]


def badge(page: Any, name: str) -> Any:
    return page.get_by_test_id(f"model-row-{name}").get_by_test_id("llama-state")


@pytest.mark.llama
def test_the_page_shows_llama_servers_state_live_and_loads_and_unloads(
        llama_server: LlamaServer, serve: Callable[..., ServerProcess], open_page: OpenPage, tmp_path: Path) -> None:
    server = serve(llama_server_url=llama_server.url)
    page = open_page(server)
    model = write_runnable_llama(tmp_path / "tiny.gguf")
    add_files(page, model)
    page.get_by_test_id("start-upload").click()
    wait_for_state(card(page, model.name), "installed")

    expect(badge(page, "tiny.gguf")).to_have_attribute("data-state", "unloaded")
    expect(badge(page, "tiny.gguf")).to_have_text("Not loaded")
    page.get_by_test_id("load-tiny.gguf").click()
    expect(badge(page, "tiny.gguf")).to_have_attribute("data-state", "loaded", timeout=60_000)
    assert llama_server.states()["tiny"] == "loaded"
    status, body = llama_server.request("POST", "/v1/completions",
                                        {"model": "tiny", "prompt": "hello", "max_tokens": 4})
    assert status == 200 and body["usage"]["completion_tokens"] > 0, body

    page.get_by_test_id("unload-tiny.gguf").click()
    expect(badge(page, "tiny.gguf")).to_have_attribute("data-state", "unloaded", timeout=30_000)
    assert llama_server.states()["tiny"] == "unloaded"

    # changed behind the page's back (llama-server asked directly): the badge follows without a reload
    assert llama_server.request("POST", "/models/load", {"model": "tiny"})[0] == 200
    expect(badge(page, "tiny.gguf")).to_have_attribute("data-state", "loaded", timeout=60_000)
    expect(page.get_by_test_id("unload-tiny.gguf")).to_be_visible()

    # a model llama-server cannot run: the badge says it failed, with the exit code
    write_model(server.models_dir / "hollow.gguf")
    page.get_by_test_id("models-refresh").click()
    page.get_by_test_id("load-hollow.gguf").click()
    expect(badge(page, "hollow.gguf")).to_have_attribute("data-state", "failed", timeout=60_000)
    expect(badge(page, "hollow.gguf")).to_contain_text("exit")
    expect(page.get_by_test_id("models-error")).to_be_hidden()
    if os.environ.get("MODELDROP_SCREENSHOTS"):
        save_screenshot(page, "browser-llama-states.png")


def test_without_llama_server_the_page_shows_no_state_and_no_load_button(
        serve: Callable[..., ServerProcess], open_page: OpenPage) -> None:
    server = serve()
    write_model(server.models_dir / "m.gguf")
    page = open_page(server)
    expect(badge(page, "m.gguf")).to_have_attribute("data-state", "off")
    expect(page.get_by_test_id("load-m.gguf")).to_have_count(0)
    wait_for(lambda: page.get_by_test_id("model-row-m.gguf").is_visible(), 5, "the row")
