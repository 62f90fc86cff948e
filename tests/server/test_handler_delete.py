"""DELETE (termination), in process (tests/support/app.py): the staged bytes and records go, a tombstone says
the upload is gone (410 to every later request), and an installed model stays where it is.

The same against a real `modeldrop serve`, with expiry: test_tus_delete.py.
"""

from __future__ import annotations

from tests.support.app import InProcess, in_process
from tests.support.tus import TUS_VERSION, assert_error, data_path, gguf_bytes, stored_files, upload_id

app = in_process()
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


def test_delete_frees_the_staged_files_and_leaves_a_tombstone(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.patch(location, MODEL[:3000], 0).status_code == 204
    response = app.tus.delete(location)
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == TUS_VERSION
    assert response.content == b""
    assert stored_files(app) == [f"{upload_id(location)}.gone"]


def test_delete_then_every_request_is_410(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.delete(location).status_code == 204
    head = app.tus.head(location)
    assert_error(head, 410)
    assert "Upload-Offset" not in head.headers
    assert_error(app.tus.patch(location, MODEL[:100], 0), 410, "gone")
    assert_error(app.tus.delete(location), 410, "gone")
    assert not data_path(app, location).exists()


def test_delete_of_no_such_upload_is_404(app: InProcess) -> None:
    assert_error(app.tus.delete("/files/" + "e" * 32), 404, "not_found")
    assert stored_files(app) == []


def test_delete_without_tus_resumable_is_412_and_keeps_the_upload(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.patch(location, MODEL[:100], 0).status_code == 204
    assert_error(app.tus.delete(location, headers={"Tus-Resumable": None}), 412, "unsupported_version")
    assert app.tus.offset(location) == 100
    assert data_path(app, location).read_bytes() == MODEL[:100]


def test_delete_through_a_post_with_method_override(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.request("POST", location, {"X-HTTP-Method-Override": "DELETE"}).status_code == 204
    assert stored_files(app) == [f"{upload_id(location)}.gone"]


def test_delete_of_an_installed_upload_forgets_it_and_keeps_the_model(app: InProcess) -> None:
    location = app.tus.upload(MODEL)
    name = app.tus.wait_state(location, "installed", "failed")["final_name"]
    assert app.tus.delete(location).status_code == 204
    assert (app.models_dir / name).read_bytes() == MODEL
    assert_error(app.tus.head(location), 410)
