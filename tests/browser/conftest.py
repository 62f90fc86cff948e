"""Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against real `modeldrop serve`.

    page = open_page(server)                  # a fresh browser context: empty localStorage/IndexedDB
    add_files(page, path, ...)                # like choosing files (the `file-input` of the contract)
    page.get_by_test_id("start-upload").click()
    wait_for_state(card(page, path.name), "installed")

Every test gets its own browser context; an uncaught exception in the page fails the test.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO, ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
# The built page under test; MODELDROP_BROWSER_WEB_DIR points the tests at another build (e.g. a patched copy).
WEB_DIR = Path(os.environ.get("MODELDROP_BROWSER_WEB_DIR") or REPO / "web" / "dist")
WEB_INDEX = WEB_DIR / "index.html"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
TERMINAL_STATES = {"installed", "failed"}


def missing_prerequisite() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium; the README's test command does it)"
    if not WEB_INDEX.exists():
        return f"{WEB_INDEX} is not built (cd web && npm ci && npm run build)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed in this environment"
    return None


@pytest.fixture
def serve(start_server: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """serve(**serve_options) -> a server of the page under test, without fsync (durability is not the point)."""
    return lambda **options: start_server(**{"fsync": False, "web_dir": WEB_DIR, **options})


@pytest.fixture
def server(serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """open_page(server, viewport=DESKTOP) -> a Page showing the server's UI once it has read /api/config."""
    contexts: list[Any] = []
    page_errors: list[str] = []

    def open_(server: ServerProcess, viewport: dict[str, int] = DESKTOP) -> Any:
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.goto(server.url)
        wait_ready(page)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not page_errors, f"uncaught exceptions in the page: {page_errors}"


def wait_ready(page: Any) -> None:
    """main.js sets body[data-ready] once /api/config answered and the uploader is being set up."""
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("[data-testid=dropzone] .uppy-Dashboard")


def add_files(page: Any, *paths: Path) -> None:
    """Adds files through the page's `file-input`, as the contract says a drop does."""
    page.get_by_test_id("file-input").set_input_files([str(path) for path in paths])


def drop_files(page: Any, *paths: Path) -> None:
    """A real drop event on the Dashboard, with a DataTransfer holding the files (small files only)."""
    files = [{"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()} for path in paths]
    transfer = page.evaluate_handle("""(files) => {
        const transfer = new DataTransfer()
        for (const file of files) {
            const bytes = Uint8Array.from(atob(file.data), (c) => c.charCodeAt(0))
            transfer.items.add(new File([bytes], file.name, { type: 'application/octet-stream' }))
        }
        return transfer
    }""", files)
    target = page.get_by_test_id("dropzone").locator(".uppy-Dashboard-inner")
    for event in ("dragenter", "dragover", "drop"):
        target.dispatch_event(event, {"dataTransfer": transfer})


def card(page: Any, filename: str) -> Any:
    return page.get_by_test_id(f"upload-status-{filename}")


def wait_for_state(upload_card: Any, state: str, timeout: float = 30) -> None:
    """Waits for the card's data-state; fails at once, with the card's text, on the other terminal state."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        seen = upload_card.get_attribute("data-state", timeout=timeout * 1000)
        if seen == state:
            return
        if seen in TERMINAL_STATES:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    text = " | ".join(upload_card.inner_text().split("\n"))
    raise AssertionError(f"expected data-state={state!r}, the card is {seen!r}: {text}")


def save_screenshot(page: Any, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path
