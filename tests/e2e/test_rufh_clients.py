"""tus-js-client speaking Resumable Uploads for HTTP (`protocol: 'ietf-draft-03'`, interop 5, and
`'ietf-draft-05'`, interop 6) against a real server: what it uploads is installed byte for byte, after an
abort, a new process or a cut connection too. It creates the upload at the endpoint it is given (`/files/`,
the tus endpoint, which tells the protocols apart) and names the file with tus's Upload-Metadata, which it
sends in these modes as well.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ggufgen import write_model
from tests.support.clients import NodeUpload, upload_with_node
from tests.support.models import MIB, assert_installed
from tests.support.processes import ServerProcess, wait_for
from tests.support.proxy import Proxy
from tests.support.rufh import RufhClient
from tests.support.tus import stored_bytes

PROTOCOLS = ["ietf-draft-03", "ietf-draft-05"]


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96 MiB model, sent in one request."""
    return write_model(tmp_path_factory.mktemp("rufh") / "large-96m.gguf", tensors=3, tensor_elems=8 * MIB)


def patches(upload: NodeUpload) -> list[dict[str, object]]:
    return [event for event in upload.of("response") if event["method"] == "PATCH"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("chunk_size", [None, 5 * MIB + 7], ids=["one-request", "chunked"])
def test_tus_js_client_rufh_upload_is_installed_byte_identical(
        start_server: Callable[..., ServerProcess], model: Path, protocol: str, chunk_size: int | None) -> None:
    server = start_server(fsync=False)
    upload = upload_with_node(model, f"{server.url}/files/", protocol=protocol, chunk_size=chunk_size)
    url = upload.of("success")[0]["url"]
    assert "/uploads/" in url  # the RUFH upload resource, not a tus URL
    assert [event["status"] for event in upload.of("response") if event["method"] == "POST"] == [201]
    assert all(200 <= int(str(event["status"])) < 300 for event in patches(upload))
    assert len(patches(upload)) == (1 if chunk_size is None else 5)
    assert_installed(server, url, model)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tus_js_client_rufh_large_file_in_one_request(
        start_server: Callable[..., ServerProcess], large: Path, protocol: str) -> None:
    # syncs every 8 MiB inside the request, each followed by a 104 progress answer the client must pass over
    server = start_server(sync_interval="8MiB")
    upload = upload_with_node(large, f"{server.url}/files/", protocol=protocol, timeout=240)
    assert len(patches(upload)) == 1
    assert_installed(server, upload.of("success")[0]["url"], large, timeout=60)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tus_js_client_rufh_abort_and_resume_in_a_new_process(
        start_server: Callable[..., ServerProcess], model: Path, tmp_path: Path, protocol: str) -> None:
    server = start_server(fsync=False)
    storage = tmp_path / "urls.json"
    endpoint = f"{server.url}/files/"
    first = NodeUpload(model, endpoint, protocol=protocol, chunk_size=4 * MIB, url_storage=storage,
                       stop_after=9 * MIB)
    assert first.wait(30) == 3, first.transcript()
    url = str(first.of("stopped")[0]["url"])
    offset = RufhClient(server.url).offset(url)
    assert 8 * MIB <= offset <= 12 * MIB
    assert stored_bytes(server, url) == model.read_bytes()[:offset]

    second = upload_with_node(model, endpoint, protocol=protocol, chunk_size=4 * MIB, url_storage=storage)
    assert [event["url"] for event in second.of("resuming")] == [url]  # findPreviousUploads found it
    heads = [(e["status"], e["offset"]) for e in second.of("response") if e["method"] == "HEAD"]
    assert heads == [(204, str(offset))]
    assert not [e for e in second.of("response") if e["method"] == "POST"], "the second process started over"
    assert_installed(server, url, model)

    third = upload_with_node(model, endpoint, protocol=protocol, chunk_size=4 * MIB, url_storage=storage)
    assert [(e["method"], e["status"]) for e in third.of("response")] == [("HEAD", 204)]  # complete: nothing sent


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tus_js_client_rufh_resumes_after_a_cut_connection(
        start_server: Callable[..., ServerProcess], proxy: Callable[..., Proxy], model: Path, protocol: str) -> None:
    server = start_server(fsync=False)
    relay = proxy(server, rate=4 * MIB)
    upload = NodeUpload(model, f"{relay.url}/files/", protocol=protocol, retry_delays=[200, 500, 1000, 2000])
    try:
        wait_for(lambda: relay.forwarded >= 8 * MIB, 30, "8 MiB through the proxy")
        relay.cut()  # mid-PATCH: the one request carries the whole file
        relay.rate = None
        url = upload.finish(60)
    finally:
        upload.stop()
    assert upload.of("retry"), upload.transcript()
    resumed = [e for e in upload.of("response") if e["method"] == "HEAD"]
    assert resumed and int(str(resumed[0]["offset"])) >= 7 * MIB, upload.transcript()  # kept what arrived
    assert {event["url"] for event in upload.of("url")} == {url}  # the same upload throughout
    assert len([e for e in upload.of("response") if e["method"] == "POST"]) == 1
    assert_installed(server, url, model)
