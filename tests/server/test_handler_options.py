"""OPTIONS, in process (tests/support/app.py): what the tus handler advertises, on the collection and on an
upload URL, whatever the request's Tus-Resumable; it reads and writes nothing.

The same against a real `modeldrop serve`: test_tus_options.py.
"""

from __future__ import annotations

import pytest

from tests.support.app import InProcess, in_process
from tests.support.tus import TUS_VERSION, stored_files

MAX_SIZE = 123_456_789
app = in_process(max_size=MAX_SIZE)
EXTENSIONS = ["creation", "creation-with-upload", "creation-defer-length", "termination", "expiration", "checksum",
              "concatenation"]


@pytest.mark.parametrize("target", ["/files/", "/files", "/files/" + "0" * 32])
def test_options_advertises_the_protocol_and_stores_nothing(app: InProcess, target: str) -> None:
    response = app.tus.options(target)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["Tus-Resumable"] == TUS_VERSION
    assert response.headers["Tus-Version"] == TUS_VERSION
    assert response.headers["Tus-Extension"].split(",") == EXTENSIONS
    assert response.headers["Tus-Max-Size"] == str(MAX_SIZE)
    assert sorted(response.headers["Tus-Checksum-Algorithm"].split(",")) == ["md5", "sha1", "sha256", "sha512"]
    assert stored_files(app) == []


@pytest.mark.parametrize("version", ["0.2.2", "2.0.0", "garbage"])
def test_options_answers_any_tus_resumable(app: InProcess, version: str) -> None:
    """OPTIONS is how a client learns the versions: it cannot be refused for asking with the wrong one."""
    response = app.tus.options(headers={"Tus-Resumable": version})
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == TUS_VERSION


def test_options_of_an_existing_upload_leaves_it_as_it_was(app: InProcess) -> None:
    location = app.tus.location(1000)
    before = app.tus.head(location).headers
    assert app.tus.options(location).status_code == 204
    after = app.tus.head(location).headers
    assert (after["Upload-Offset"], after["Upload-Length"]) == (before["Upload-Offset"], before["Upload-Length"])
