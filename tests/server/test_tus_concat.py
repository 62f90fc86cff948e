"""concatenation (N1–N8): partials are not models; a final is assembled in order and installed."""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import (TusClient, assert_error, data_path, gguf_bytes, module_server, stored_files, unique_name,
                               upload_id)

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


def test_concat_partial_listed_twice_is_400_and_creates_nothing(client: TusClient, server: ServerProcess) -> None:
    # one 1 MiB partial listed 60 times would otherwise become 60 MiB of staging in one request
    first, second = partial(client, MODEL[:SPLIT]), partial(client, MODEL[SPLIT:])
    before = stored_files(server)
    response = final(client, [first, first, second])
    assert_error(response, 400, "invalid_header")
    assert upload_id(first) in response.json()["message"]
    assert stored_files(server) == before
    assert client.wait_state(final(client, [first, second]).headers["Location"], "installed")


def test_concat_partial_is_used_by_one_final_only(client: TusClient, server: ServerProcess) -> None:
    first, second = partial(client, MODEL[:SPLIT]), partial(client, MODEL[SPLIT:])
    created = final(client, [first, second])
    assert created.status_code == 201
    client.wait_state(created.headers["Location"], "installed")
    before = stored_files(server)
    again = final(client, [first, second])
    assert again.status_code in (409, 410), again.text
    assert "concatenat" in again.json()["message"]
    assert stored_files(server) == before
    # consumed: its bytes are in the final, so staging holds them once, not twice
    assert not data_path(server, first).exists() and not data_path(server, second).exists()


def test_concat_failed_final_frees_its_data_and_its_partials(client: TusClient, server: ServerProcess) -> None:
    broken = MODEL[:4] + b"\xff\xff\xff\x7f" + MODEL[8:]  # the magic, then a GGUF version nobody knows
    first, second = partial(client, broken[:SPLIT]), partial(client, broken[SPLIT:])
    location = final(client, [first, second]).headers["Location"]
    status = client.wait_state(location, "failed")
    assert status["reason"]
    wait_for(lambda: not data_path(server, location).exists(), 5, "the failed final's bytes to be freed")
    assert client.head(location).headers["Upload-Offset"] == str(len(MODEL))  # the record stays, with its reason
    for part in (first, second):
        assert client.head(part).status_code == 410
        assert not data_path(server, part).exists()


def test_concat_partial_deleted_while_its_final_is_assembled_leaves_nothing_stuck(
        client: TusClient, server: ServerProcess) -> None:
    """A DELETE of a partial a final is being assembled from is refused (409) rather than waited for."""
    big = bytes(96 * 1024 * 1024)
    parts = [partial(client, MODEL[:SPLIT]), partial(client, big), partial(client, big)]
    deletes: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        creating = pool.submit(final, TusClient(server.url), parts)
        while not creating.done():
            deletes.append(client.delete(parts[-1]).status_code)
        response = creating.result()
    assert all(status < 500 for status in deletes), deletes
    assert response.status_code < 500, response.text
    if response.status_code == 201:
        # the partial was never taken from under the final: refused while the copy ran, and freed
        # (the server may answer 204 before this thread sees the 201) only once the final held every byte
        location = response.headers["Location"]
        assert client.head(location).headers["Upload-Offset"] == str(len(MODEL[:SPLIT]) + 2 * len(big))
        assert client.wait_state(location, "installed", "failed")["reason"] is not None
        if 204 in deletes:
            assert set(deletes[deletes.index(204) + 1:]) <= {404, 410}, deletes
    else:
        assert response.status_code in (409, 410), response.text
        assert 204 in deletes
    # no final left in receiving, holding a slot and its reservation
    for record in (server.staging_dir / "uploads").glob("*.info"):
        if '"concat": "final"' in record.read_text():
            assert record.with_suffix(".status").exists(), record
    for part in parts[:2]:
        client.delete(part)


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
