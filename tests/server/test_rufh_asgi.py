"""Resumable Uploads for HTTP where no 104 can be sent: the app under another ASGI server (here in process,
with no connection of modeldrop's own). Careful creation, appends and offset retrieval need none."""

from __future__ import annotations

from tests.support.app import InProcess, in_process
from tests.support.rufh import RufhClient
from tests.support.tus import gguf_bytes, stored_bytes, unique_name

app = in_process()
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


def test_rufh_upload_without_interim_responses(app: InProcess) -> None:
    client = RufhClient(http=app.tus.http)
    name = unique_name("asgi")
    created = client.create(length=len(MODEL), name=name)
    assert created.status_code == 201
    location = created.headers["Location"]
    first = client.append(location, MODEL[:5000], 0)
    assert (first.status_code, first.headers["Upload-Offset"]) == (204, "5000")
    assert stored_bytes(app, location) == MODEL[:5000]
    assert client.offset(location) == 5000
    last = client.append(location, MODEL[5000:], 5000, complete=True)
    assert (last.status_code, last.headers["Upload-Complete"]) == (200, "?1")
    assert app.tus.wait_installed(location)["final_name"] == name


def test_rufh_creation_with_the_whole_file_without_a_104(app: InProcess) -> None:
    client = RufhClient(http=app.tus.http)
    created = client.create(MODEL, complete=True)
    assert created.status_code == 201 and created.headers["Upload-Complete"] == "?1"
    app.tus.wait_installed(created.headers["Location"])
