"""The page follows the server's request size limit (--max-append-size, /api/config's max_append_size) when the
user chose no chunk size: a server behind Cloudflare takes uploads from the page without anyone setting it."""

from __future__ import annotations

import filecmp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import add_files, card, missing_prerequisite, wait_for_state
from tests.ggufgen import write_model
from tests.support.processes import ServerProcess

_missing = missing_prerequisite()
if _missing:
    pytest.skip(f"browser tests need it: {_missing}", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser
LIMIT = 1024 * 1024


def test_the_page_sends_at_most_the_servers_limit(serve: Callable[..., ServerProcess],
                                                  open_page: Callable[..., Any], tmp_path: Path) -> None:
    server = serve(max_append_size=str(LIMIT))
    model = write_model(tmp_path / "Limited-Q4_K_M.gguf", tensors=3, tensor_elems=300 * 1024)  # ~3.5 MiB
    page = open_page(server)
    patches: list[int] = []
    page.on("request", lambda request: patches.append(len(request.post_data_buffer or b""))
            if request.method == "PATCH" else None)
    expect(page.get_by_test_id("chunk-size")).to_have_value("server")
    expect(page.get_by_test_id("chunk-size")).to_contain_text("Server's limit (1 MB per request)")
    add_files(page, model)
    page.get_by_test_id("start-upload").click()
    wait_for_state(card(page, model.name), "installed")
    assert len(patches) == -(-model.stat().st_size // LIMIT)
    assert max(patches) <= LIMIT
    assert filecmp.cmp(server.models_dir / model.name, model, shallow=False)
