"""POST: creation (K1–K8), creation-with-upload (W2, W3), Tus-Resumable (C1, C2), expiration on POST (E1)."""

from __future__ import annotations

import email.utils
import time

import pytest

from tests.support.processes import ServerProcess
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import (PATCH_TYPE, RawRequest, TusClient, assert_error, data_path, encode_metadata,
                               error_code, gguf_bytes, module_server, nothing_stored, stored_files, unique_name,
                               upload_id, wait_offset)


EXPIRE_AFTER = 3600
server = module_server(fsync=False, max_size=1_000_000, expire_after=EXPIRE_AFTER)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


def test_post_creates_an_upload_with_an_absolute_location(client: TusClient, server: ServerProcess) -> None:
    response = client.create(len(MODEL))
    assert response.status_code == 201
    location = response.headers["Location"]
    assert location.startswith(f"{server.url}/files/")
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert data_path(server, location).read_bytes() == b""
    assert client.head(location).status_code == 200


def test_post_response_carries_upload_expires(client: TusClient) -> None:
    before = time.time()
    response = client.create(len(MODEL))
    expires = email.utils.parsedate_to_datetime(response.headers["Upload-Expires"]).timestamp()
    assert before + EXPIRE_AFTER - 5 <= expires <= time.time() + EXPIRE_AFTER + 5


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0"])
def test_post_without_supported_tus_resumable_is_412_and_creates_nothing(
        client: TusClient, server: ServerProcess, version: str | None) -> None:
    with nothing_stored(server):
        response = client.create(len(MODEL), headers={"Tus-Resumable": version})
    assert_error(response, 412, "unsupported_version")
    assert response.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize("headers", [
    {"Upload-Length": None},                                    # neither length nor deferral
    {"Upload-Length": "10", "Upload-Defer-Length": "1"},        # both
    {"Upload-Length": None, "Upload-Defer-Length": "0"},        # deferral other than 1
    {"Upload-Length": None, "Upload-Defer-Length": "yes"},
    {"Upload-Length": "-1"},                                    # C16: negative
    {"Upload-Length": "12abc"},                                 # C16: not a number
    {"Upload-Length": "1e3"},
    {"Upload-Length": ""},
])
def test_post_with_bad_length_headers_is_400(client: TusClient, server: ServerProcess,
                                             headers: dict[str, str | None]) -> None:
    with nothing_stored(server):
        response = client.create(100, headers=headers)
    assert_error(response, 400, "invalid_header")


def test_post_above_max_size_is_413(client: TusClient, server: ServerProcess) -> None:
    with nothing_stored(server):
        response = client.create(1_000_001)
    assert_error(response, 413, "too_large")
    assert client.create(1_000_000).status_code == 201


@pytest.mark.parametrize("metadata", [
    "filename",                          # no value is allowed by tus, but a filename is needed: see admission
    "filename bW9kZWwuZ2d1Zg== extra",   # three parts
    "filename bW9kZWwuZ2d1Zg==,",        # empty key after the comma
    "filename bW9kZWwuZ2d1Zg==,filename bW9kZWwuZ2d1Zg==",  # duplicate key
    "filename not*base64",
    "filename bW9kZWw",                  # base64 without padding
    "filename //79",                     # base64 of bytes that are not UTF-8
])
def test_post_with_malformed_metadata_is_400(client: TusClient, metadata: str) -> None:
    response = client.create(len(MODEL), headers={"Upload-Metadata": metadata})
    assert response.status_code == 400
    assert error_code(response) in ("invalid_metadata", "invalid_filename")


def test_post_metadata_value_may_be_empty(client: TusClient) -> None:
    header = encode_metadata({"filename": unique_name()}) + ",note,other"
    response = client.create(len(MODEL), headers={"Upload-Metadata": header})
    assert response.status_code == 201
    assert client.head(response.headers["Location"]).headers["Upload-Metadata"] == header


@pytest.mark.parametrize("name", ["evil\r\nX-Injected: 1.gguf", "../../etc/passwd.gguf", "a\nb.gguf"])
def test_post_filename_that_could_smuggle_headers_or_paths_is_400(client: TusClient, name: str) -> None:
    assert_error(client.create(len(MODEL), metadata={"filename": name}), 400, "invalid_filename")


def test_post_with_zero_length_is_refused_as_not_gguf(client: TusClient, server: ServerProcess) -> None:
    with nothing_stored(server):
        response = client.create(0)
    assert_error(response, 400, "not_gguf")


def test_post_with_body_stores_it_and_reports_the_offset(client: TusClient, server: ServerProcess) -> None:
    response = client.create(len(MODEL), body=MODEL[:1000])
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "1000"
    location = response.headers["Location"]
    assert data_path(server, location).read_bytes() == MODEL[:1000]
    assert client.offset(location) == 1000
    assert client.patch(location, MODEL[1000:], 1000).status_code == 204


def test_post_with_whole_body_completes_and_installs(client: TusClient, server: ServerProcess) -> None:
    name = unique_name()
    response = client.create(len(MODEL), metadata={"filename": name}, body=MODEL)
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == str(len(MODEL))
    client.wait_state(response.headers["Location"], "installed")
    assert (server.models_dir / name).read_bytes() == MODEL


def test_post_body_with_wrong_content_type_is_415_and_creates_nothing(client: TusClient,
                                                                      server: ServerProcess) -> None:
    with nothing_stored(server):
        response = client.create(len(MODEL), body=MODEL, headers={"Content-Type": "application/octet-stream"})
    assert_error(response, 415, "unsupported_media_type")


def test_post_body_longer_than_upload_length_is_413_and_creates_nothing(client: TusClient,
                                                                         server: ServerProcess) -> None:
    with nothing_stored(server):
        response = client.create(100, body=MODEL[:200])
    assert_error(response, 413, "too_large")


def test_post_body_that_is_not_gguf_is_400_and_stores_nothing(client: TusClient, server: ServerProcess) -> None:
    before = set(stored_files(server))
    assert_error(client.create(len(MODEL), body=b"PK\x03\x04" + MODEL[4:]), 400, "not_gguf")
    created = [name for name in set(stored_files(server)) - before if name.endswith(".bin")]
    assert [(server.staging_dir / "uploads" / name).stat().st_size for name in created] in ([], [0])


def test_post_body_dropped_half_way_keeps_the_bytes_that_arrived(client: TusClient, server: ServerProcess) -> None:
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": str(len(MODEL)), "Content-Type": PATCH_TYPE,
               "Upload-Metadata": encode_metadata({"filename": unique_name()})}
    before = set(stored_files(server))
    raw = RawRequest(f"{server.url}/files/", "POST", headers, len(MODEL))
    raw.send(MODEL[:3000])
    time.sleep(0.3)
    raw.close()
    created = [name for name in set(stored_files(server)) - before if name.endswith(".bin")]
    assert len(created) == 1
    location = f"{server.url}/files/{created[0][:-4]}"
    wait_offset(client, location, 3000)
    assert data_path(server, location).read_bytes() == MODEL[:3000]


def test_post_deferred_length_then_declared_on_patch(client: TusClient, server: ServerProcess) -> None:
    location = client.location(None)
    head = client.head(location)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    assert client.patch(location, MODEL[:100], 0).status_code == 204
    assert client.head(location).headers["Upload-Defer-Length"] == "1"
    response = client.patch(location, MODEL[100:], 100, headers={"Upload-Length": str(len(MODEL))})
    assert response.status_code == 204
    head = client.head(location)
    assert head.headers["Upload-Length"] == str(len(MODEL))
    assert "Upload-Defer-Length" not in head.headers
    client.wait_state(location, "installed")


def test_post_deferred_length_cannot_change_once_declared(client: TusClient) -> None:
    location = client.location(None)
    assert client.patch(location, MODEL[:100], 0, headers={"Upload-Length": str(len(MODEL))}).status_code == 204
    response = client.patch(location, MODEL[100:200], 100, headers={"Upload-Length": str(len(MODEL) + 1)})
    assert_error(response, 400, "invalid_header")
    assert client.offset(location) == 100
    assert client.head(location).headers["Upload-Length"] == str(len(MODEL))
    same = client.patch(location, MODEL[100:200], 100, headers={"Upload-Length": str(len(MODEL))})
    assert same.status_code == 204


def test_post_deferred_length_above_max_size_is_413(client: TusClient) -> None:
    location = client.location(None)
    response = client.patch(location, MODEL[:100], 0, headers={"Upload-Length": "1000001"})
    assert_error(response, 413, "too_large")
    assert client.offset(location) == 0


def test_post_deferred_length_body_cannot_pass_max_size(client: TusClient, server: ServerProcess) -> None:
    location = client.location(None)
    body = MODEL + bytes(1_000_001 - len(MODEL))
    assert_error(client.patch(location, body, 0), 413, "too_large")
    assert data_path(server, location).stat().st_size <= 1_000_000


def test_post_on_files_without_trailing_slash_works(client: TusClient) -> None:
    response = client.request("POST", "/files", {"Upload-Length": str(len(MODEL)),
                                                 "Upload-Metadata": encode_metadata({"filename": unique_name()})})
    assert response.status_code == 201
    assert len(upload_id(response.headers["Location"])) == 32
