"""GET, in process (tests/support/app.py). tus has no GET; tusd's handler serves an upload's bytes on it. Here
an upload's bytes are never served (they are not verified until installed): GET of an upload URL, or of the
collection, is refused, whether a web UI is mounted at / (404) or not (405). What GET gives is the upload's
status, at the Modeldrop-Status address every tus answer carries: /api/uploads/<id>.

The status API against a real `modeldrop serve`: tests/worker/test_finalize_pipeline.py, test_tus_head.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.app import InProcess, in_process, running_app
from tests.support.tus import assert_error, gguf_bytes, upload_id

app = in_process()
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


@pytest.mark.parametrize(("web_ui", "status", "code"), [(True, 404, "not_found"),
                                                        (False, 405, "method_not_allowed")])
def test_get_never_serves_an_uploads_bytes(tmp_path: Path, web_ui: bool, status: int, code: str) -> None:
    web = tmp_path / "web"
    web.mkdir()
    if web_ui:
        (web / "index.html").write_text("<h1>the page</h1>")
    with running_app(tmp_path / "data", web_dir=web) as running:
        location = running.tus.location(len(MODEL))
        assert running.tus.patch(location, MODEL[:3000], 0).status_code == 204
        for target in (location, "/files/", "/files"):
            response = running.tus.request("GET", target)
            assert_error(response, status, code)
            assert response.headers["Content-Type"] == "application/json"
            assert MODEL[:4] not in response.content
        if web_ui:  # the page is at /: the static files are what refuse /files/<id> (no such file)
            assert running.tus.request("GET", "/").text == "<h1>the page</h1>"


def test_get_status_follows_the_upload_from_receiving_to_installed(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    status_path = app.tus.head(location).headers["Modeldrop-Status"]
    assert status_path == f"/api/uploads/{upload_id(location)}"
    assert app.tus.patch(location, MODEL[:1000], 0).status_code == 204
    receiving = app.tus.get_json(status_path)
    assert (receiving["id"], receiving["state"]) == (upload_id(location), "receiving")
    assert (receiving["offset"], receiving["length"], receiving["reason"]) == (1000, len(MODEL), None)
    assert app.tus.patch(location, MODEL[1000:], 1000).status_code == 204
    installed = app.tus.wait_state(location, "installed", "failed")
    assert installed == app.tus.get_json(status_path)
    assert installed["state"] == "installed" and installed["offset"] == len(MODEL)
    assert (app.models_dir / installed["final_name"]).read_bytes() == MODEL


def test_get_status_of_a_failed_upload_gives_the_reason(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.patch(location, b"\x89PNG" + MODEL[4:100], 0).status_code == 400
    status = app.tus.status(location)
    assert status["state"] == "failed" and "GGUF" in status["reason"]


@pytest.mark.parametrize(("upload", "status", "code"), [("f" * 32, 404, "not_found"), ("xyz", 404, "not_found")])
def test_get_status_of_no_such_upload_is_404(app: InProcess, upload: str, status: int, code: str) -> None:
    response = app.tus.request("GET", f"/api/uploads/{upload}")
    assert (response.status_code, response.json()["error"]) == (status, code)


def test_get_status_of_a_terminated_upload_is_410(app: InProcess) -> None:
    location = app.tus.location(len(MODEL))
    assert app.tus.delete(location).status_code == 204
    response = app.tus.request("GET", f"/api/uploads/{upload_id(location)}")
    assert (response.status_code, response.json()["error"]) == (410, "gone")
