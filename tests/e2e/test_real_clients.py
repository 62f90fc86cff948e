"""Real clients against a real server: what they upload is installed byte for byte."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.clients import NodeUpload, tuspy_uploader, upload_with_node
from tests.support.models import MIB, assert_installed
from tests.support.processes import ServerProcess
from tests.support.tus import TusClient, stored_bytes


@pytest.mark.parametrize("options", [
    pytest.param({}, id="one-patch"),
    pytest.param({"chunk_size": 5 * MIB + 7}, id="chunked"),
    pytest.param({"parallel_uploads": 3}, id="parallel-concatenation"),
])
def test_tus_js_client_upload_is_installed_byte_identical(
        start_server: Callable[..., ServerProcess], model: Path, options: dict[str, int]) -> None:
    server = start_server(fsync=False)
    upload = upload_with_node(model, f"{server.url}/files/", chunk_size=options.get("chunk_size"),
                              parallel=options.get("parallel_uploads"))

    patches = [event for event in upload.of("response") if event["method"] == "PATCH"]
    assert all(event["status"] == 204 for event in patches)
    if "chunk_size" in options:
        assert len(patches) == 5  # 24 MiB in chunks of 5 MiB + 7
    if "parallel_uploads" in options:
        assert len({event["url"] for event in patches}) == 3  # three partial uploads, then one final
    assert_installed(server, upload.of("success")[0]["url"], model)


def test_tuspy_resumes_with_the_stored_url(start_server: Callable[..., ServerProcess], model: Path,
                                           tmp_path: Path) -> None:
    server = start_server(fsync=False)
    storage = tmp_path / "tuspy-urls.json"
    first = tuspy_uploader(f"{server.url}/files/", model, chunk_size=3 * MIB, url_storage=storage)
    first.upload(stop_at=9 * MIB)  # three chunks, then the "program" stops
    url = str(first.url)

    resumed = tuspy_uploader(f"{server.url}/files/", model, chunk_size=3 * MIB, url_storage=storage)
    assert resumed.url == url, "tuspy did not find its stored upload URL"
    assert resumed.offset == TusClient(server.url).offset(url) == 9 * MIB
    assert stored_bytes(server, url) == model.read_bytes()[:9 * MIB]
    resumed.upload()
    assert_installed(server, url, model)


def test_tus_js_client_resumes_in_a_new_process_from_its_url_storage(
        start_server: Callable[..., ServerProcess], model: Path, tmp_path: Path) -> None:
    """A CLI or a reloaded page: the first process aborts mid-chunk and exits, the next one resumes."""
    server = start_server(fsync=False)
    storage = tmp_path / "tus-urls.json"
    first = NodeUpload(model, f"{server.url}/files/", chunk_size=4 * MIB, url_storage=storage, stop_after=9 * MIB)
    assert first.wait(30) == 3, first.transcript()
    url = first.of("stopped")[0]["url"]
    offset = TusClient(server.url).offset(url)
    assert 8 * MIB <= offset <= 12 * MIB  # two chunks, and what arrived of the aborted third
    assert stored_bytes(server, url) == model.read_bytes()[:offset]

    second = upload_with_node(model, f"{server.url}/files/", chunk_size=4 * MIB, url_storage=storage)
    assert [event["url"] for event in second.of("resuming")] == [url]
    assert [e["offset"] for e in second.of("response") if e["method"] == "HEAD"] == [str(offset)]
    assert not [e for e in second.of("response") if e["method"] == "POST"], "the second process started over"
    assert_installed(server, url, model)

    # survey §2: a HEAD that answered 4xx for an installed upload would make the client send it all again
    third = upload_with_node(model, f"{server.url}/files/", chunk_size=4 * MIB, url_storage=storage)
    requests = [(e["method"], e["status"], e["offset"]) for e in third.of("response")]
    assert requests == [("HEAD", 200, str(model.stat().st_size))]
