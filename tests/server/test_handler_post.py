"""POST, in process (tests/support/app.py): creation, creation-with-upload, creation-defer-length and
concatenation, each answered by the tus handler and checked on the staging disk.

The same against a real `modeldrop serve`, with more cases: test_tus_post.py, test_tus_concat.py,
test_tus_admission.py.
"""

from __future__ import annotations

import email.utils
import time

import pytest

from tests.support.app import InProcess, in_process
from tests.support.tus import (TUS_VERSION, assert_error, data_path, encode_metadata, gguf_bytes, nothing_stored,
                               stored_files, unique_name, upload_id)

MAX_SIZE = 1_000_000
EXPIRE_AFTER = 3600
app = in_process(max_size=MAX_SIZE, expire_after=EXPIRE_AFTER)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)
SPLIT = 5000


# -- creation ---------------------------------------------------------------------------------------


def test_post_creates_an_empty_upload_at_an_absolute_location(app: InProcess) -> None:
    before = time.time()
    response = app.tus.create(len(MODEL))
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith(f"{app.url}/files/") and len(upload_id(location)) == 32
    assert response.headers["Tus-Resumable"] == TUS_VERSION
    assert "Upload-Offset" not in response.headers
    expires = email.utils.parsedate_to_datetime(response.headers["Upload-Expires"]).timestamp()
    assert before + EXPIRE_AFTER - 5 <= expires <= time.time() + EXPIRE_AFTER + 5
    assert stored_files(app) == [f"{upload_id(location)}.bin", f"{upload_id(location)}.info"]
    assert data_path(app, location).read_bytes() == b""
    head = app.tus.head(location)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("0", str(len(MODEL)))


def test_post_keeps_the_metadata_as_sent(app: InProcess) -> None:
    header = encode_metadata({"filename": unique_name(), "sha256": "ab" * 32}) + ",note"
    location = app.tus.location(len(MODEL), headers={"Upload-Metadata": header})
    assert app.tus.head(location).headers["Upload-Metadata"] == header


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({"Tus-Resumable": None}, 412, "unsupported_version"),
    ({"Tus-Resumable": "0.2.2"}, 412, "unsupported_version"),
    ({"Upload-Length": None}, 400, "invalid_header"),                    # neither a length nor a deferral
    ({"Upload-Length": "-1"}, 400, "invalid_header"),
    ({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400, "invalid_header"),
    ({"Upload-Length": str(MAX_SIZE + 1)}, 413, "too_large"),
    ({"Upload-Metadata": "filename bm90ZXMudHh0"}, 400, "invalid_filename"),  # notes.txt
    ({"Upload-Metadata": None}, 400, "invalid_filename"),               # no filename at all
    ({"Upload-Metadata": "filename not*base64"}, 400, "invalid_metadata"),
], ids=["no-version", "old-version", "no-length", "negative-length", "length-and-deferral", "above-max-size",
        "not-gguf-name", "no-filename", "bad-metadata"])
def test_post_refused_creates_nothing(app: InProcess, headers: dict[str, str | None], status: int,
                                      code: str) -> None:
    with nothing_stored(app):
        response = app.tus.create(len(MODEL), headers=headers)
    assert_error(response, status, code)
    if status == 412:
        assert response.headers["Tus-Version"] == TUS_VERSION


def test_post_at_max_size_is_accepted(app: InProcess) -> None:
    assert app.tus.create(MAX_SIZE).status_code == 201


def test_post_with_zero_length_is_not_a_model(app: InProcess) -> None:
    with nothing_stored(app):
        assert_error(app.tus.create(0), 400, "not_gguf")


# -- creation-with-upload ----------------------------------------------------------------------------


def test_post_with_a_body_stores_it_and_tells_the_offset(app: InProcess) -> None:
    response = app.tus.create(len(MODEL), body=MODEL[:1000])
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "1000"
    location = response.headers["Location"]
    assert data_path(app, location).read_bytes() == MODEL[:1000]
    assert app.tus.offset(location) == 1000
    assert app.tus.patch(location, MODEL[1000:], 1000).status_code == 204


def test_post_with_the_whole_body_installs_the_model(app: InProcess) -> None:
    name = unique_name()
    response = app.tus.create(len(MODEL), metadata={"filename": name}, body=MODEL)
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == str(len(MODEL))
    assert app.tus.wait_state(response.headers["Location"], "installed", "failed")["state"] == "installed"
    assert (app.models_dir / name).read_bytes() == MODEL


@pytest.mark.parametrize(("length", "body", "headers", "status", "code"), [
    (len(MODEL), MODEL, {"Content-Type": "application/octet-stream"}, 415, "unsupported_media_type"),
    (100, MODEL[:200], {}, 413, "too_large"),
], ids=["wrong-content-type", "longer-than-length"])
def test_post_with_a_body_refused_creates_nothing(app: InProcess, length: int, body: bytes, headers: dict[str, str],
                                                  status: int, code: str) -> None:
    with nothing_stored(app):
        response = app.tus.create(length, body=body, headers=headers)
    assert_error(response, status, code)


def test_post_with_a_body_that_is_not_gguf_keeps_none_of_it(app: InProcess) -> None:
    assert_error(app.tus.create(len(MODEL), body=b"PK\x03\x04" + MODEL[4:]), 400, "not_gguf")
    assert [path.stat().st_size for path in (app.staging_dir / "uploads").glob("*.bin")] in ([], [0])


# -- creation-defer-length ---------------------------------------------------------------------------


def test_post_with_deferred_length_takes_it_on_a_later_patch(app: InProcess) -> None:
    location = app.tus.location(None)
    head = app.tus.head(location)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    assert app.tus.patch(location, MODEL[:100], 0).status_code == 204
    assert data_path(app, location).read_bytes() == MODEL[:100]
    response = app.tus.patch(location, MODEL[100:], 100, headers={"Upload-Length": str(len(MODEL))})
    assert response.status_code == 204, response.text
    head = app.tus.head(location)
    assert head.headers["Upload-Length"] == str(len(MODEL)) and "Upload-Defer-Length" not in head.headers
    assert app.tus.wait_state(location, "installed", "failed")["state"] == "installed"


@pytest.mark.parametrize("value", ["0", "yes", "2"])
def test_post_with_a_deferral_other_than_1_is_400(app: InProcess, value: str) -> None:
    with nothing_stored(app):
        response = app.tus.create(None, headers={"Upload-Defer-Length": value})
    assert_error(response, 400, "invalid_header")


# -- concatenation -----------------------------------------------------------------------------------


def partial(app: InProcess, data: bytes, complete: bool = True) -> str:
    location = app.tus.location(len(data), metadata={}, headers={"Upload-Concat": "partial"})
    if complete:
        assert app.tus.patch(location, data, 0).status_code == 204
    return location


def final(app: InProcess, urls: list[str], name: str | None = None):  # type: ignore[no-untyped-def]
    return app.tus.create(None, metadata={"filename": name or unique_name()},
                          headers={"Upload-Concat": "final;" + " ".join(urls), "Upload-Defer-Length": None})


def test_post_partial_needs_no_filename_and_is_never_finalized(app: InProcess) -> None:
    location = partial(app, MODEL[SPLIT:])  # not starting with GGUF: partials are not checked for the magic
    head = app.tus.head(location)
    assert head.headers["Upload-Concat"] == "partial"
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(MODEL) - SPLIT)
    assert data_path(app, location).read_bytes() == MODEL[SPLIT:]
    assert app.tus.status(location)["state"] == "receiving"
    assert not (app.staging_dir / "uploads" / f"{upload_id(location)}.status").exists()


def test_post_final_is_its_partials_in_order_and_installs(app: InProcess) -> None:
    first, second = partial(app, MODEL[:SPLIT]), partial(app, MODEL[SPLIT:])
    name = unique_name()
    response = final(app, [first, "/files/" + upload_id(second)], name)
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    head = app.tus.head(location)
    assert head.headers["Upload-Length"] == head.headers["Upload-Offset"] == str(len(MODEL))
    assert head.headers["Upload-Concat"] == f"final;{first} {second}"
    assert app.tus.wait_state(location, "installed", "failed")["state"] == "installed"
    assert (app.models_dir / name).read_bytes() == MODEL


def test_post_final_refuses_an_unfinished_partial_and_a_length(app: InProcess) -> None:
    first, unfinished = partial(app, MODEL[:SPLIT]), partial(app, MODEL[SPLIT:], complete=False)
    with nothing_stored(app):
        assert_error(final(app, [first, unfinished]), 400, "invalid_header")
        assert_error(app.tus.create(len(MODEL), headers={"Upload-Concat": f"final;{first}"}), 400, "invalid_header")


def test_post_final_does_not_take_a_patch(app: InProcess) -> None:
    first, second = partial(app, MODEL[:SPLIT]), partial(app, MODEL[SPLIT:])
    location = final(app, [first, second]).headers["Location"]
    assert_error(app.tus.patch(location, b"GGUF", 0), 403, "forbidden")
    assert app.tus.wait_state(location, "installed", "failed")["state"] == "installed"
