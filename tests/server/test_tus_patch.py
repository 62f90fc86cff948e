"""PATCH: C10–C16, 413 past the length, the GGUF magic, X-HTTP-Method-Override (C6), Upload-Expires (E1)."""

from __future__ import annotations

import time

import pytest

from tests.support.processes import ServerProcess
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import (PATCH_TYPE, RawPatch, TusClient, assert_error, data_path, gguf_bytes, module_server,
                               nothing_stored, wait_offset)


IDLE_TIMEOUT = 1.5
server = module_server(fsync=False, idle_timeout=IDLE_TIMEOUT)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


@pytest.fixture
def location(client: TusClient) -> str:
    return client.location(len(MODEL))


def test_patch_appends_and_reports_the_new_offset(client: TusClient, server: ServerProcess, location: str) -> None:
    first = client.patch(location, MODEL[:5000], 0)
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "5000"
    assert first.headers["Tus-Resumable"] == "1.0.0"
    second = client.patch(location, MODEL[5000:9000], 5000)
    assert second.headers["Upload-Offset"] == "9000"
    assert data_path(server, location).read_bytes() == MODEL[:9000]
    assert client.offset(location) == 9000


def test_patch_response_carries_upload_expires(client: TusClient, location: str) -> None:
    response = client.patch(location, MODEL[:100], 0)
    assert response.headers["Upload-Expires"].endswith(" GMT")


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_patch_with_wrong_content_type_is_415_and_stores_nothing(
        client: TusClient, server: ServerProcess, location: str, content_type: str | None) -> None:
    with nothing_stored(server):
        response = client.patch(location, MODEL[:100], 0, headers={"Content-Type": content_type})
    assert_error(response, 415, "unsupported_media_type")
    assert client.offset(location) == 0


def test_patch_content_type_with_parameters_is_accepted(client: TusClient, location: str) -> None:
    response = client.patch(location, MODEL[:100], 0, headers={"Content-Type": PATCH_TYPE + "; charset=binary"})
    assert response.status_code == 204


def test_patch_without_tus_resumable_is_412_and_stores_nothing(client: TusClient, server: ServerProcess,
                                                                location: str) -> None:
    with nothing_stored(server):
        response = client.patch(location, MODEL[:100], 0, headers={"Tus-Resumable": None})
    assert_error(response, 412, "unsupported_version")
    assert response.headers["Tus-Version"] == "1.0.0"


def test_patch_with_wrong_offset_is_409_with_the_real_offset(client: TusClient, server: ServerProcess,
                                                              location: str) -> None:
    assert client.patch(location, MODEL[:1000], 0).status_code == 204
    for wrong in (0, 999, 1001, 5000):
        with nothing_stored(server):
            response = client.patch(location, MODEL[wrong:wrong + 500], wrong)
        assert_error(response, 409, "offset_mismatch")
        assert response.headers["Upload-Offset"] == "1000"
    assert data_path(server, location).read_bytes() == MODEL[:1000]


@pytest.mark.parametrize("offset", ["-1", "abc", "1.5", "", " 0x10"])
def test_patch_with_malformed_offset_is_400(client: TusClient, server: ServerProcess, location: str,
                                            offset: str) -> None:
    with nothing_stored(server):
        response = client.patch(location, MODEL[:100], 0, headers={"Upload-Offset": offset.strip() or offset})
    assert_error(response, 400, "invalid_header")


def test_patch_without_offset_is_400(client: TusClient, server: ServerProcess, location: str) -> None:
    with nothing_stored(server):
        assert_error(client.patch(location, MODEL[:100], 0, headers={"Upload-Offset": None}), 400, "invalid_header")


def test_patch_on_unknown_upload_is_404(client: TusClient) -> None:
    assert_error(client.patch("/files/" + "a" * 32, MODEL[:100], 0), 404, "not_found")
    assert_error(client.patch("/files/not-an-id", MODEL[:100], 0), 404, "not_found")


def test_patch_past_upload_length_is_413_before_storing(client: TusClient, server: ServerProcess) -> None:
    location = client.location(1000)
    with nothing_stored(server):
        response = client.patch(location, MODEL[:1001], 0)
    assert_error(response, 413, "too_large")
    assert client.offset(location) == 0


def test_patch_on_complete_upload_with_more_bytes_is_413(client: TusClient, location: str) -> None:
    assert client.patch(location, MODEL, 0).status_code == 204
    assert_error(client.patch(location, b"GGUF", len(MODEL)), 413, "too_large")


def test_patch_repeated_after_completion_is_answered_204(client: TusClient, location: str) -> None:
    assert client.patch(location, MODEL, 0).status_code == 204
    again = client.patch(location, b"", len(MODEL))
    assert again.status_code == 204
    assert again.headers["Upload-Offset"] == str(len(MODEL))


def test_patch_first_bytes_not_gguf_is_400_and_stores_nothing(client: TusClient, server: ServerProcess,
                                                              location: str) -> None:
    response = client.patch(location, b"\x89PNG" + MODEL[4:1000], 0)
    assert_error(response, 400, "not_gguf")
    assert client.offset(location) == 0
    assert not data_path(server, location).exists()  # failed: the record and its reason stay, no bytes
    assert client.status(location)["state"] == "failed"


def test_patch_magic_split_over_two_requests_is_accepted(client: TusClient, server: ServerProcess,
                                                         location: str) -> None:
    assert client.patch(location, MODEL[:2], 0).headers["Upload-Offset"] == "2"
    assert client.patch(location, MODEL[2:4], 2).headers["Upload-Offset"] == "4"
    assert client.patch(location, MODEL[4:], 4).status_code == 204
    installed = client.wait_state(location, "installed")
    assert (server.models_dir / installed["final_name"]).read_bytes() == MODEL


def test_patch_wrong_second_half_of_the_magic_is_400(client: TusClient, server: ServerProcess,
                                                     location: str) -> None:
    assert client.patch(location, b"GG", 0).status_code == 204
    assert_error(client.patch(location, b"XX" + MODEL[4:100], 2), 400, "not_gguf")
    assert client.offset(location) == 2  # none of the request's bytes; the failed upload's own are freed
    assert not data_path(server, location).exists()


def test_patch_short_first_body_that_is_not_gguf_is_400(client: TusClient, location: str) -> None:
    assert_error(client.patch(location, b"PK", 0), 400, "not_gguf")


def test_patch_interrupted_body_keeps_what_arrived(client: TusClient, server: ServerProcess, location: str) -> None:
    raw = RawPatch(location, 0, len(MODEL))
    raw.send(MODEL[:6000])
    time.sleep(0.3)
    raw.close()
    wait_offset(client, location, 6000)
    assert data_path(server, location).read_bytes() == MODEL[:6000]
    assert client.patch(location, MODEL[6000:], 6000).status_code == 204


def test_patch_stalled_sender_is_cut_after_idle_timeout(client: TusClient, server: ServerProcess,
                                                        location: str) -> None:
    started = time.monotonic()
    raw = RawPatch(location, 0, len(MODEL))
    raw.send(MODEL[:3000])
    try:
        assert raw.response_status(timeout=30) == 500  # tusd's choice: clients retry 5xx
        assert time.monotonic() - started < IDLE_TIMEOUT + 3
    finally:
        raw.close()
    assert client.offset(location) == 3000


@pytest.mark.parametrize("override", ["PATCH", "patch"])
def test_patch_through_post_with_method_override(client: TusClient, server: ServerProcess, location: str,
                                                 override: str) -> None:
    response = client.request("POST", location, {"X-HTTP-Method-Override": override, "Content-Type": PATCH_TYPE,
                                                  "Upload-Offset": "0"}, MODEL[:700])
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "700"
    assert data_path(server, location).read_bytes() == MODEL[:700]


def test_method_override_delete_and_nothing_but_patch_or_delete(client: TusClient, location: str) -> None:
    refused = client.request("POST", location, {"X-HTTP-Method-Override": "HEAD"})
    assert refused.status_code == 400  # only a POST turned into PATCH or DELETE, as tus clients need
    assert client.offset(location) == 0
    assert client.request("POST", location, {"X-HTTP-Method-Override": "DELETE"}).status_code == 204
    assert client.head(location).status_code in (404, 410)
