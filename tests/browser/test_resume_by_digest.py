"""The page, with a pasted SHA-256, sends nothing the server has (README: Resume from anywhere): a file installed
under another name is installed by link, and an upload begun elsewhere continues at the server's offset. Uppy's
tus-js-client PATCHes at 0 after the creation; the server refuses it (409) before reading the body and closes the
connection, so Chromium stops sending, and Uppy's retry HEADs and goes on. Bytes are counted by a relay the page is
loaded through."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.browser.conftest import add_files, card, missing_prerequisite, wait_for_state
from tests.support.models import MIB, assert_installed, sha256_of
from tests.support.processes import ServerProcess
from tests.support.proxy import Proxy
from tests.support.tus import TusClient

_missing = missing_prerequisite()
if _missing:
    pytest.skip(f"browser tests need it: {_missing}", allow_module_level=True)

pytestmark = pytest.mark.browser

OpenPage = Callable[..., Any]
IN_FLIGHT = 8 * MIB  # what the refused PATCH at 0 may have put on the wire before the 409 came back


def start_with_digest(page: Any, path: Path, digest: str) -> Any:
    add_files(page, path)
    upload_card = card(page, path.name)
    upload_card.get_by_test_id("sha256-input").fill(digest)
    page.get_by_test_id("start-upload").click()
    return upload_card


def test_the_page_installs_a_copy_the_server_has_without_sending_it(
        server: ServerProcess, open_page: OpenPage, model: Path, proxy: Callable[..., Proxy], tmp_path: Path) -> None:
    digest = sha256_of(model)
    assert_installed(server, TusClient(server.url).upload_file(model), model)
    copy = tmp_path / "Same-Bytes-Q4_K_M.gguf"
    shutil.copyfile(model, copy)
    relay = proxy(server)
    page = open_page(SimpleNamespace(url=relay.url))
    loaded = relay.forwarded

    wait_for_state(start_with_digest(page, copy, digest), "installed")
    assert relay.forwarded - loaded < IN_FLIGHT, f"{relay.forwarded - loaded} bytes sent"
    assert os.stat(server.models_dir / copy.name).st_ino == os.stat(server.models_dir / model.name).st_ino


def test_the_page_continues_an_upload_begun_elsewhere(
        server: ServerProcess, open_page: OpenPage, model: Path, proxy: Callable[..., Proxy]) -> None:
    digest = sha256_of(model)
    client = TusClient(server.url)
    started = client.location(model.stat().st_size, metadata={"filename": model.name, "sha256": digest})
    assert client.patch(started, model.read_bytes()[:12 * MIB], 0).status_code == 204
    relay = proxy(server)
    page = open_page(SimpleNamespace(url=relay.url))
    loaded = relay.forwarded

    wait_for_state(start_with_digest(page, model, digest), "installed")
    rest = model.stat().st_size - 12 * MIB
    assert rest <= relay.forwarded - loaded < rest + IN_FLIGHT, f"{relay.forwarded - loaded} bytes for {rest}"
    assert client.status(started)["state"] == "installed"
    assert_installed(server, started, model)
