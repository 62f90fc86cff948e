"""The web uploader end to end: real Chromium, the built page from web/dist, a real `modeldrop serve`.

Everything is checked the way a person would see it (the page's data-testid contract in web/README.md)
and against the server's disk: what the page calls installed is in models/, byte for byte.
"""

from __future__ import annotations

import filecmp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import (
    PHONE, add_files, card, drop_files, missing_prerequisite, save_screenshot, wait_for_state, wait_ready,
)
from tests.ggufgen import truncate_by, write_model, write_sparse_model, write_split_set
from tests.support.models import sha256_of
from tests.support.processes import ServerProcess

_missing = missing_prerequisite()
if _missing:
    pytest.skip(f"browser tests need it: {_missing}", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Any]


def cell(row: Any, label: str) -> Any:
    """A cell of a models-table row by its column (the `data-label` the phone layout shows)."""
    return row.locator(f"td[data-label='{label}']")


def upload(page: Any, path: Path, state: str = "installed", timeout: float = 30) -> Any:
    """Adds one file, presses the start button and waits for the card to reach `state`."""
    add_files(page, path)
    upload_card = card(page, path.name)
    expect(upload_card).to_have_attribute("data-state", "ready")
    page.get_by_test_id("start-upload").click()
    wait_for_state(upload_card, state, timeout)
    return upload_card


def record_tus_requests(page: Any) -> list[tuple[str, str, dict[str, str]]]:
    """(method, url, headers) of every request to the tus endpoint, across reloads of the page."""
    seen: list[tuple[str, str, dict[str, str]]] = []
    page.on("request", lambda request: seen.append((request.method, request.url, request.headers))
            if "/files/" in request.url else None)
    return seen


# -- 1. an upload through the page is installed ------------------------------------------------------------


def test_a_dropped_model_is_installed_listed_and_byte_identical(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    model = write_model(tmp_path / "Tiny-Q4_K_M.gguf", tensors=4, tensor_elems=4096)
    page = open_page(server)
    expect(page.get_by_test_id("models-empty")).to_be_visible()
    requests = record_tus_requests(page)

    upload_card = upload(page, model)

    expect(upload_card.get_by_test_id("state")).to_have_text("Installed")
    expect(upload_card.get_by_test_id("meta")).to_contain_text("Installed as Tiny-Q4_K_M.gguf")
    expect(upload_card.get_by_test_id("details")).to_contain_text("llama")
    expect(upload_card.get_by_test_id("details")).to_contain_text("Q4_K_M")
    row = page.get_by_test_id("model-row-Tiny-Q4_K_M.gguf")
    expect(row).to_be_visible()
    expect(page.get_by_test_id("models-table")).to_be_visible()
    expect(row).to_have_attribute("data-kind", "file")
    expect(cell(row, "Architecture")).to_have_text("llama")
    expect(cell(row, "Quantization")).to_have_text("Q4_K_M")
    expect(page.get_by_test_id("copy-sha-Tiny-Q4_K_M.gguf")).to_have_attribute("data-sha256", sha256_of(model))
    installed = server.models_dir / model.name
    assert filecmp.cmp(installed, model, shallow=False)
    assert [method for method, _, _ in requests] == ["POST", "PATCH"], requests  # one PATCH per file by default


# -- 2. a reload in the middle of an upload resumes it ------------------------------------------------------


def test_a_reload_mid_upload_resumes_from_the_servers_offset(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    model = write_sparse_model(tmp_path / "Big-Q4_K_M.gguf", size_gib=0.1)  # ~107 MB of a real GGUF
    page = open_page(server)
    requests = record_tus_requests(page)
    network = page.context.new_cdp_session(page)
    network.send("Network.enable")
    throttle = {"offline": False, "latency": 0, "downloadThroughput": -1}
    network.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": 16 * 1024 * 1024})

    add_files(page, model)
    page.get_by_test_id("start-upload").click()
    upload_card = card(page, model.name)
    progress = upload_card.get_by_test_id("progress")
    expect(upload_card).to_have_attribute("data-state", "uploading")
    page.wait_for_function("(bar) => Number(bar.getAttribute('aria-valuenow')) >= 20", arg=progress.element_handle())
    assert int(progress.get_attribute("aria-valuenow")) < 100, "the throttled upload ended before the reload"

    before_reload = len(requests)
    page.reload()
    network.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": -1})
    expect(upload_card).to_have_attribute("data-state", "interrupted")
    expect(upload_card.get_by_test_id("state")).to_have_text("Interrupted")
    expect(upload_card.get_by_test_id("reselect")).to_be_visible()
    expect(upload_card.get_by_test_id("meta")).to_contain_text("Choose the same file again")

    add_files(page, model)  # what the card's "Choose file…" button opens
    wait_for_state(upload_card, "installed", timeout=60)

    posts = [url for method, url, _ in requests if method == "POST"]
    assert len(posts) == 1, f"a second upload was created instead of resuming: {requests}"
    upload_url = next(url for method, url, _ in requests if method == "PATCH")
    resumed = [(method, url, headers) for method, url, headers in requests[before_reload:]]
    assert [method for method, _, _ in resumed][:2] == ["HEAD", "PATCH"], resumed
    assert all(url == upload_url for _, url, _ in resumed), resumed
    offset = int(resumed[1][2]["upload-offset"])
    assert 0 < offset < model.stat().st_size, resumed
    assert filecmp.cmp(server.models_dir / model.name, model, shallow=False)


RELOAD_WHEN_SENT = """(name) => {
    // Reloads the moment the card leaves the browser-side states: the page has just seen the last byte
    // acknowledged and handed the upload to its finalizer (localStorage "modeldrop.finalize").
    const browserSide = ['ready', 'waiting', 'uploading']
    new MutationObserver((_, observer) => {
        const card = document.querySelector(`[data-testid="upload-status-${name}"]`)
        if (card && card.dataset.state && !browserSide.includes(card.dataset.state)) {
            observer.disconnect()
            location.reload()
        }
    }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['data-state'] })
}"""


def test_a_reload_right_after_the_last_byte_shows_the_servers_state(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    # When the reload lands depends on the throttle's timer, so three uploads are tried: each one must come
    # back showing the server's state (installed), none as an Interrupted file waiting to be chosen again.
    page = open_page(server)
    for attempt in range(3):
        model = write_model(tmp_path / f"Quick-{attempt}-Q4_K_M.gguf", tensors=4, tensor_elems=4096)
        add_files(page, model)
        upload_card = card(page, model.name)
        expect(upload_card).to_have_attribute("data-state", "ready")
        page.evaluate(RELOAD_WHEN_SENT, model.name)
        with page.expect_event("load"):
            page.get_by_test_id("start-upload").click()
        wait_ready(page)
        wait_for_state(upload_card, "installed", timeout=5)
        expect(page.get_by_test_id("start-upload")).to_be_hidden()
        expect(page.get_by_test_id("dropzone")).not_to_contain_text("Session restored")
        assert filecmp.cmp(server.models_dir / model.name, model, shallow=False)


# -- 3. a failure shows its reason; a wrong kind of file is refused -------------------------------------------


def test_a_truncated_model_fails_with_the_servers_reason(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    model = truncate_by(write_model(tmp_path / "Cut-Q4_K_M.gguf", tensors=4, tensor_elems=4096), 1000)
    page = open_page(server)

    upload_card = upload(page, model, state="failed")

    expect(upload_card.get_by_test_id("state")).to_have_text("Failed")
    expect(upload_card.get_by_test_id("reason")).to_be_visible()
    expect(upload_card.get_by_test_id("reason")).to_contain_text("truncated")
    expect(upload_card.get_by_test_id("dismiss")).to_be_visible()
    assert not (server.models_dir / model.name).exists()
    expect(page.get_by_test_id("models-empty")).to_be_visible()


def test_a_file_that_is_not_gguf_is_refused_before_upload(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    page = open_page(server)
    requests = record_tus_requests(page)

    add_files(page, notes)

    notice = page.get_by_test_id("upload-notices").get_by_test_id("notice")
    expect(notice).to_have_count(1)
    expect(notice).to_contain_text("notes.txt")
    expect(notice).to_contain_text(".gguf")
    expect(card(page, "notes.txt")).to_have_count(0)
    expect(page.get_by_test_id("start-upload")).to_be_hidden()
    page.wait_for_timeout(300)
    assert requests == []


# -- 4. the access token ----------------------------------------------------------------------------------


def test_the_token_dialog_rejects_a_wrong_token_and_keeps_the_right_one(
        serve: Callable[..., ServerProcess], open_page: OpenPage, tmp_path: Path) -> None:
    server = serve(token=["s3cret"])
    model = write_model(tmp_path / "Guarded-Q4_K_M.gguf")
    page = open_page(server)
    requests = record_tus_requests(page)
    dialog = page.get_by_test_id("token-dialog")
    expect(dialog).to_have_attribute("open", "")
    expect(page.get_by_test_id("auth-error")).to_be_hidden()

    page.get_by_test_id("token-input").fill("wrong")
    page.get_by_test_id("token-save").click()
    expect(page.get_by_test_id("auth-error")).to_be_visible()
    expect(page.get_by_test_id("auth-error")).to_contain_text("did not accept")
    expect(dialog).to_have_attribute("open", "")
    assert page.evaluate("localStorage.getItem('modeldrop.token')") is None

    page.get_by_test_id("token-input").fill("s3cret")
    page.get_by_test_id("token-save").click()
    expect(dialog).not_to_have_attribute("open", "")
    assert page.evaluate("localStorage.getItem('modeldrop.token')") == "s3cret"
    expect(page.get_by_test_id("token-change")).to_be_visible()
    expect(page.get_by_test_id("models-empty")).to_be_visible()

    upload(page, model)
    expect(page.get_by_test_id(f"model-row-{model.name}")).to_be_visible()
    assert filecmp.cmp(server.models_dir / model.name, model, shallow=False)
    assert requests and all(headers.get("authorization") == "Bearer s3cret" for _, _, headers in requests), requests

    page.reload()  # the token stays in this browser: no dialog, the list loads
    expect(page.get_by_test_id(f"model-row-{model.name}")).to_be_visible()
    expect(dialog).not_to_have_attribute("open", "")


# -- 5. the optional expected SHA-256 ------------------------------------------------------------------------


def test_a_wrong_expected_sha256_fails_the_install(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    model = write_model(tmp_path / "Checked-Q4_K_M.gguf")
    page = open_page(server)
    add_files(page, model)
    upload_card = card(page, model.name)
    sha_input = upload_card.get_by_test_id("sha256-input")

    sha_input.fill("abc")  # not a SHA-256: shown, and the start is blocked
    expect(upload_card.get_by_test_id("sha256-error")).to_be_visible()
    page.get_by_test_id("start-upload").click()
    expect(page.get_by_test_id("notice")).to_contain_text("SHA-256")
    expect(upload_card).to_have_attribute("data-state", "ready")

    sha_input.fill("0" * 64)
    expect(upload_card.get_by_test_id("sha256-error")).to_be_hidden()
    page.get_by_test_id("start-upload").click()
    wait_for_state(upload_card, "failed")

    expect(upload_card.get_by_test_id("reason")).to_contain_text("sha256 mismatch")
    assert not (server.models_dir / model.name).exists()


def test_a_pasted_sha256_is_normalised_and_checked(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    model = write_model(tmp_path / "Pasted-Q4_K_M.gguf")
    digest = sha256_of(model)
    page = open_page(server)
    add_files(page, model)
    upload_card = card(page, model.name)

    upload_card.get_by_test_id("sha256-input").fill(f"  SHA256: {digest.upper()} ")
    expect(upload_card.get_by_test_id("sha256-error")).to_be_hidden()
    page.get_by_test_id("start-upload").click()
    wait_for_state(upload_card, "installed")

    expect(upload_card.get_by_test_id("sha256")).to_contain_text("matches")
    assert filecmp.cmp(server.models_dir / model.name, model, shallow=False)


# -- 6. deleting a model ----------------------------------------------------------------------------------


def test_delete_asks_first_then_removes_the_file(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    model = write_model(tmp_path / "Doomed-Q4_K_M.gguf")
    page = open_page(server)
    upload(page, model)
    installed = server.models_dir / model.name
    row = page.get_by_test_id(f"model-row-{model.name}")
    expect(row).to_be_visible()
    dialog = page.get_by_test_id("confirm-dialog")

    page.get_by_test_id(f"delete-{model.name}").click()
    expect(dialog).to_have_attribute("open", "")
    expect(dialog).to_contain_text(model.name)
    page.get_by_test_id("confirm-cancel").click()
    expect(dialog).not_to_have_attribute("open", "")
    page.wait_for_timeout(300)
    assert installed.exists(), "'Keep it' deleted the model"
    expect(row).to_be_visible()

    page.get_by_test_id(f"delete-{model.name}").click()
    page.get_by_test_id("confirm-ok").click()
    expect(row).to_have_count(0)
    expect(page.get_by_test_id("models-empty")).to_be_visible()
    assert not installed.exists()


# -- 7. a split model -------------------------------------------------------------------------------------


def test_a_dropped_split_set_is_installed_as_one_model_with_its_shards(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, "Split-Test", 3, tensor_elems=4096)
    page = open_page(server)

    drop_files(page, *shards)  # a real drop on the Dashboard
    for shard in shards:
        expect(card(page, shard.name)).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("start-upload")).to_contain_text("3 files")
    page.get_by_test_id("start-upload").click()
    for shard in shards:
        wait_for_state(card(page, shard.name), "installed")

    row = page.get_by_test_id("model-row-Split-Test")
    expect(row).to_have_attribute("data-kind", "split")
    expect(page.locator("[data-testid^=model-row-]")).to_have_count(1)
    expect(cell(row, "Architecture")).to_have_text("llama")
    page.get_by_test_id("shards-toggle-Split-Test").click()
    listed = page.get_by_test_id("shards-Split-Test")
    for shard in shards:
        expect(listed.get_by_test_id(f"shard-{shard.name}")).to_be_visible()
    expect(listed.locator("[data-testid^=shard-]")).to_have_count(3)
    for shard in shards:
        assert filecmp.cmp(server.models_dir / "Split-Test" / shard.name, shard, shallow=False)


# -- 8. how it looks ---------------------------------------------------------------------------------------


def test_screenshots_on_desktop_and_phone_without_horizontal_overflow(
        server: ServerProcess, open_page: OpenPage, tmp_path: Path) -> None:
    good = write_model(tmp_path / "Llama-3.2-1B-Instruct-Q4_K_M.gguf", tensors=4, tensor_elems=4096)
    bad = truncate_by(write_model(tmp_path / "Broken-Download-Q8_0.gguf", tensors=4, tensor_elems=4096), 1000)
    page = open_page(server)
    upload(page, good)
    upload(page, bad, state="failed")
    expect(page.get_by_test_id(f"model-row-{good.name}")).to_be_visible()

    desktop = save_screenshot(page, "browser-desktop-1280x800.png")
    save_screenshot(page, "browser-desktop-full.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(700)  # let the last byte's status settle before the screenshot reload
    page.reload()  # laid out from the start at phone width; the finished cards come back from localStorage
    expect(card(page, bad.name).get_by_test_id("reason")).to_contain_text("truncated")
    expect(page.get_by_test_id(f"model-row-{good.name}")).to_be_visible()
    phone = save_screenshot(page, "browser-phone-375x740.png")
    save_screenshot(page, "browser-phone-full.png", full_page=True)

    assert desktop.stat().st_size > 10_000 and phone.stat().st_size > 10_000
    overflow = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert overflow[0] <= PHONE["width"], f"the page scrolls sideways on a phone: scrollWidth {overflow}"
    # still usable: the model's delete button and the card's actions are on screen, not cut off
    for element in (page.get_by_test_id(f"delete-{good.name}"), card(page, bad.name).get_by_test_id("dismiss")):
        element.scroll_into_view_if_needed()
        box = element.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
