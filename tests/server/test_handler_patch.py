"""PATCH, in process (tests/support/app.py): bytes appended at the offset the client names and nowhere else,
refused before a byte is stored when the request is wrong, a checksummed request kept whole or not at all, a
body that stops half way kept as far as it arrived, and the last byte handing the upload to the finalizer.

The same against a real `modeldrop serve`, with more cases (idle timeouts, sockets cut by hand, spliced
bodies): test_tus_patch.py, test_tus_checksum.py, test_tus_spliced.py.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.support.app import InProcess, in_process
from tests.support.tus import (PATCH_TYPE, TUS_VERSION, assert_error, data_path, gguf_bytes, nothing_stored,
                               upload_id)

app = in_process()
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


@pytest.fixture
def location(app: InProcess) -> str:
    return app.tus.location(len(MODEL))


def sha1(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


def test_patch_appends_at_the_offset_and_tells_the_new_one(app: InProcess, location: str) -> None:
    first = app.tus.patch(location, MODEL[:5000], 0)
    assert first.status_code == 204
    assert (first.headers["Upload-Offset"], first.headers["Tus-Resumable"]) == ("5000", TUS_VERSION)
    assert first.headers["Upload-Expires"].endswith(" GMT")
    second = app.tus.patch(location, MODEL[5000:9000], 5000)
    assert second.headers["Upload-Offset"] == "9000"
    assert data_path(app, location).read_bytes() == MODEL[:9000]


def test_patch_of_the_last_byte_hands_the_upload_to_the_finalizer(app: InProcess, location: str) -> None:
    assert app.tus.patch(location, MODEL[:100], 0).status_code == 204
    assert app.tus.status(location)["state"] == "receiving"
    done = app.tus.patch(location, MODEL[100:], 100)
    assert done.headers["Upload-Offset"] == str(len(MODEL))
    status = app.tus.wait_state(location, "installed", "failed")
    assert status["state"] == "installed" and status["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert (app.models_dir / status["final_name"]).read_bytes() == MODEL
    again = app.tus.patch(location, b"", len(MODEL))  # a client that did not hear the answer asks again
    assert (again.status_code, again.headers["Upload-Offset"]) == (204, str(len(MODEL)))


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({"Tus-Resumable": None}, 412, "unsupported_version"),
    ({"Content-Type": None}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/octet-stream"}, 415, "unsupported_media_type"),
    ({"Upload-Offset": None}, 400, "invalid_header"),
    ({"Upload-Offset": "-1"}, 400, "invalid_header"),
    ({"Upload-Offset": "1.5"}, 400, "invalid_header"),
    ({"Upload-Checksum": "crc32 AAAAAA=="}, 400, None),
], ids=["no-version", "no-content-type", "octet-stream", "no-offset", "negative-offset", "fraction-offset",
        "unknown-checksum"])
def test_patch_refused_stores_nothing(app: InProcess, location: str, headers: dict[str, str | None], status: int,
                                      code: str | None) -> None:
    with nothing_stored(app):
        response = app.tus.patch(location, MODEL[:100], 0, headers=headers)
    assert_error(response, status, code)
    assert app.tus.offset(location) == 0


def test_patch_at_another_offset_is_409_telling_the_real_one(app: InProcess, location: str) -> None:
    assert app.tus.patch(location, MODEL[:1000], 0).status_code == 204
    for wrong in (0, 999, 1001):
        with nothing_stored(app):
            response = app.tus.patch(location, MODEL[wrong:wrong + 500], wrong)
        assert_error(response, 409, "offset_mismatch")
        assert response.headers["Upload-Offset"] == "1000"
    assert data_path(app, location).read_bytes() == MODEL[:1000]


def test_patch_past_the_length_is_413_before_storing(app: InProcess) -> None:
    location = app.tus.location(1000)
    with nothing_stored(app):
        assert_error(app.tus.patch(location, MODEL[:1001], 0), 413, "too_large")


def test_patch_of_no_such_upload_is_404(app: InProcess) -> None:
    assert_error(app.tus.patch("/files/" + "a" * 32, MODEL[:100], 0), 404, "not_found")


def test_patch_whose_first_bytes_are_not_gguf_fails_the_upload(app: InProcess, location: str) -> None:
    assert_error(app.tus.patch(location, b"\x89PNG" + MODEL[4:1000], 0), 400, "not_gguf")
    assert not data_path(app, location).exists()  # failed: the record and its reason stay, no bytes
    status = app.tus.status(location)
    assert status["state"] == "failed" and "GGUF" in status["reason"]


def test_patch_with_a_checksum_keeps_the_request_whole_or_not_at_all(app: InProcess, location: str) -> None:
    assert app.tus.patch(location, MODEL[:1000], 0).status_code == 204
    chunk = MODEL[1000:4000]
    wrong = app.tus.patch(location, chunk, 1000, headers={"Upload-Checksum": sha1(chunk + b"x")})
    assert_error(wrong, 460, "checksum_mismatch")
    assert data_path(app, location).read_bytes() == MODEL[:1000]
    assert not (app.staging_dir / "uploads" / f"{upload_id(location)}.pending").exists()
    right = app.tus.patch(location, chunk, 1000, headers={"Upload-Checksum": sha1(chunk)})
    assert right.headers["Upload-Offset"] == "4000"
    assert data_path(app, location).read_bytes() == MODEL[:4000]


def test_patch_cut_off_half_way_keeps_the_bytes_that_arrived(app: InProcess, location: str) -> None:
    headers = {"Tus-Resumable": TUS_VERSION, "Content-Type": PATCH_TYPE, "Upload-Offset": "0",
               "Content-Length": str(len(MODEL))}
    app.call("PATCH", "/files/" + upload_id(location), headers, [MODEL[:3000], MODEL[3000:6000]], disconnect=True)
    assert app.tus.offset(location) == 6000
    assert data_path(app, location).read_bytes() == MODEL[:6000]
    assert app.tus.patch(location, MODEL[6000:], 6000).status_code == 204


def test_patch_with_a_checksum_cut_off_half_way_keeps_none_of_it(app: InProcess, location: str) -> None:
    assert app.tus.patch(location, MODEL[:1000], 0).status_code == 204
    headers = {"Tus-Resumable": TUS_VERSION, "Content-Type": PATCH_TYPE, "Upload-Offset": "1000",
               "Content-Length": str(len(MODEL) - 1000), "Upload-Checksum": sha1(MODEL[1000:])}
    app.call("PATCH", "/files/" + upload_id(location), headers, [MODEL[1000:3000]], disconnect=True)
    assert app.tus.offset(location) == 1000  # the checksum covers what never came: none of it counts
    assert data_path(app, location).read_bytes() == MODEL[:1000]


def test_patch_through_a_post_with_method_override(app: InProcess, location: str) -> None:
    response = app.tus.request("POST", location, {"X-HTTP-Method-Override": "PATCH", "Content-Type": PATCH_TYPE,
                                                  "Upload-Offset": "0"}, MODEL[:700])
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "700")
    assert data_path(app, location).read_bytes() == MODEL[:700]
