"""concatenation (N1–N8): partials are not models; a final is assembled in order and installed."""

from __future__ import annotations

import pytest

from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, assert_error, data_path, gguf_bytes, module_server, unique_name, upload_id

server = module_server(fsync=False)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)
SPLIT = 5000


def partial(client: TusClient, data: bytes, complete: bool = True) -> str:
    location = client.location(len(data), metadata={}, headers={"Upload-Concat": "partial"})
    if complete:
        assert client.patch(location, data, 0).status_code == 204
    return location


def final(client: TusClient, urls: list[str], name: str | None = None):  # type: ignore[no-untyped-def]
    return client.create(None, metadata={"filename": name or unique_name()},
                         headers={"Upload-Concat": "final;" + " ".join(urls), "Upload-Defer-Length": None})


def test_concat_partial_finishing_does_not_finalize(client: TusClient, server: ServerProcess) -> None:
    location = partial(client, MODEL[SPLIT:])  # not starting with GGUF: partials are not checked for the magic
    head = client.head(location)
    assert head.headers["Upload-Concat"] == "partial"
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(MODEL) - SPLIT)
    assert client.status(location)["state"] == "receiving"
    assert data_path(server, location).read_bytes() == MODEL[SPLIT:]
    assert not (server.staging_dir / "uploads" / f"{upload_id(location)}.status").exists()  # never queued


def test_concat_final_is_assembled_in_order_and_installed(client: TusClient, server: ServerProcess) -> None:
    first, second = partial(client, MODEL[:SPLIT]), partial(client, MODEL[SPLIT:])
    relative_second = "/files/" + upload_id(second)
    name = unique_name()
    response = final(client, [first, relative_second], name)
    assert response.status_code == 201
    location = response.headers["Location"]
    head = client.head(location)
    assert head.headers["Upload-Length"] == head.headers["Upload-Offset"] == str(len(MODEL))
    assert head.headers["Upload-Concat"] == f"final;{first} {server.url}{relative_second}"
    status = client.wait_state(location, "installed")
    assert status["final_name"] == name
    assert (server.models_dir / name).read_bytes() == MODEL
    # partials are freed right after the final is installed (just after its status says so)
    wait_for(lambda: client.head(first).status_code == 410, 10, "the partial to be freed")


def test_concat_final_gets_its_own_metadata(client: TusClient) -> None:
    first = client.location(SPLIT, metadata={"filename": unique_name(), "note": "partial"},
                            headers={"Upload-Concat": "partial"})
    assert client.patch(first, MODEL[:SPLIT], 0).status_code == 204
    second = partial(client, MODEL[SPLIT:])
    response = final(client, [first, second])
    metadata = client.head(response.headers["Location"]).headers["Upload-Metadata"]
    assert metadata == response.request.headers["Upload-Metadata"]
    assert "note" not in metadata


def test_concat_partial_may_appear_twice(client: TusClient) -> None:
    first, second = partial(client, MODEL[:SPLIT]), partial(client, MODEL[SPLIT:])
    response = final(client, [first, first, second])
    assert response.status_code == 201
    assert client.head(response.headers["Location"]).headers["Upload-Length"] == str(len(MODEL) + SPLIT)


def test_concat_patch_on_final_is_403_and_changes_nothing(client: TusClient, server: ServerProcess) -> None:
    first, second = partial(client, MODEL[:SPLIT]), partial(client, MODEL[SPLIT:])
    location = final(client, [first, second]).headers["Location"]
    assert_error(client.patch(location, b"GGUF", 0), 403, "forbidden")
    assert_error(client.patch(location, b"GGUF", len(MODEL)), 403, "forbidden")
    assert client.wait_state(location, "installed")


def test_concat_final_with_unfinished_partial_is_refused(client: TusClient) -> None:
    first, second = partial(client, MODEL[:SPLIT]), partial(client, MODEL[SPLIT:], complete=False)
    assert_error(final(client, [first, second]), 400, "invalid_header")


def test_concat_final_with_upload_length_is_400(client: TusClient) -> None:
    first = partial(client, MODEL)
    response = client.create(len(MODEL), headers={"Upload-Concat": f"final;{first}"})
    assert_error(response, 400, "invalid_header")


def test_concat_final_not_starting_with_gguf_is_400(client: TusClient) -> None:
    assert_error(final(client, [partial(client, MODEL[SPLIT:])]), 400, "not_gguf")


@pytest.mark.parametrize("url", ["/files/../../etc/passwd", "/files/../uploads/x", "/etc/passwd",
                                 "/files/%2e%2e%2fsecret", "http://evil.example/other/" + "a" * 32,
                                 "/files/" + "a" * 32 + "/../" + "b" * 32])
def test_concat_url_outside_our_uploads_is_400(client: TusClient, url: str) -> None:
    assert_error(final(client, [url]), 400, "invalid_header")


def test_concat_url_naming_a_plain_upload_is_400(client: TusClient) -> None:
    plain = client.location(len(MODEL))
    assert client.patch(plain, MODEL, 0).status_code == 204
    assert_error(final(client, [plain]), 400, "invalid_header")


@pytest.mark.parametrize("header", ["final;", "final", "partial;x", "whatever"])
def test_concat_malformed_header_is_400(client: TusClient, header: str) -> None:
    assert_error(client.create(10, headers={"Upload-Concat": header}), 400, "invalid_header")
