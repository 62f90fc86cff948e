"""HEAD, in process (tests/support/app.py): the offset is the staged file's length, told with the upload's
length (or its deferral), metadata and expiry, never cached by the client; unknown, malformed, terminated and
installed uploads each get their own answer.

The same against a real `modeldrop serve`, with more cases: test_tus_head.py.
"""

from __future__ import annotations

import pytest

from tests.support.app import InProcess, in_process
from tests.support.tus import (TUS_VERSION, assert_error, data_path, encode_metadata, gguf_bytes, unique_name,
                               upload_id, wait_offset)

app = in_process()
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


def test_head_tells_offset_length_metadata_and_expiry_and_forbids_caching(app: InProcess) -> None:
    metadata = encode_metadata({"filename": unique_name(), "note": "kept as sent"})
    location = app.tus.location(len(MODEL), headers={"Upload-Metadata": metadata})
    response = app.tus.head(location)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Tus-Resumable"] == TUS_VERSION
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == str(len(MODEL))
    assert response.headers["Upload-Metadata"] == metadata
    assert response.headers["Upload-Expires"].endswith(" GMT")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Modeldrop-Status"] == f"/api/uploads/{upload_id(location)}"


def test_head_offset_is_the_staged_files_length(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.patch(location, MODEL[:1234], 0).status_code == 204
    assert app.tus.offset(location) == data_path(app, location).stat().st_size == 1234
    assert app.tus.offset(location) == 1234  # the second answer from memory
    with open(data_path(app, location), "ab") as staged:  # a change by anyone on this host is seen at once
        staged.write(MODEL[1234:2000])
    wait_offset(app.tus, location, 2000, timeout=5)


def test_head_of_a_deferred_length_says_so(app: InProcess) -> None:
    response = app.tus.head(app.tus.location(None))
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers


def test_head_without_tus_resumable_is_412(app: InProcess) -> None:
    response = app.tus.head(app.tus.location(len(MODEL)), headers={"Tus-Resumable": None})
    assert_error(response, 412)
    assert response.headers["Tus-Version"] == TUS_VERSION
    assert response.content == b""


@pytest.mark.parametrize("path", ["/files/" + "f" * 32, "/files/xyz", "/files/" + "F" * 32, "/files/..%2f..%2fetc"])
def test_head_of_no_such_upload_is_404_without_an_offset(app: InProcess, path: str) -> None:
    response = app.tus.head(path)
    assert_error(response, 404)
    assert "Upload-Offset" not in response.headers


def test_head_of_a_terminated_upload_is_410(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.delete(location).status_code == 204
    response = app.tus.head(location)
    assert_error(response, 410)
    assert "Upload-Offset" not in response.headers


def test_head_of_an_installed_upload_is_complete_not_404(app: InProcess) -> None:
    location = app.tus.upload(MODEL, chunk=4000)
    assert app.tus.wait_state(location, "installed", "failed")["state"] == "installed"
    assert not data_path(app, location).exists()  # the bytes moved to models/
    response = app.tus.head(location)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(MODEL))
    assert "Upload-Expires" not in response.headers
