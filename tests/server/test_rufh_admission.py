"""An RUFH upload meets every rule a tus upload meets: names from Content-Disposition (or Upload-Metadata), the
GGUF magic first, no overwrite, disk admission, and the browser guards (origins, host names)."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator

import httpx
import pytest

from tests.support.processes import ServerProcess
from tests.support.rufh import PROBLEM, RufhClient, resource
from tests.support.tus import (TusClient, encode_metadata, gguf_bytes, module_server, nothing_stored, stored_files,
                               unique_name)

server = module_server(fsync=False)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[RufhClient]:
    rufh = RufhClient(server.url)
    yield rufh
    rufh.http.close()


def sha256_field(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    assert response.json()["error"] == code


def test_the_name_comes_from_content_disposition(client: RufhClient, server: ServerProcess) -> None:
    name = unique_name("disposition")
    location = client.location(MODEL, complete=True, name=None,
                               headers={"Content-Disposition": f"inline; filename*=UTF-8''{name}"})
    assert TusClient(server.url).wait_installed(location)["final_name"] == name


def test_the_name_may_come_from_tus_metadata(client: RufhClient, server: ServerProcess) -> None:
    name = unique_name("metadata")
    location = client.location(MODEL, complete=True, name=None,
                               headers={"Upload-Metadata": encode_metadata({"filename": name})})
    assert TusClient(server.url).wait_installed(location)["final_name"] == name


@pytest.mark.parametrize("disposition", [
    None,                                                  # no name at all
    'attachment; filename="model.bin"',                    # not .gguf
    'attachment; filename="../up.gguf"',                   # not a plain name
    "attachment; filename*=UTF-8''%E2%88%95etc.gguf",      # U+2215, a look-alike of /
    'attachment; filename=".hidden.gguf"',
])
def test_names_tus_refuses_are_refused(client: RufhClient, server: ServerProcess, disposition: str | None) -> None:
    with nothing_stored(server):
        response = client.create(MODEL, complete=True, name=None, headers={"Content-Disposition": disposition})
    refused(response, 400, "invalid_filename")
    assert response.headers["Upload-Complete"] == "?0"


def test_an_installed_name_is_not_overwritten(client: RufhClient, server: ServerProcess) -> None:
    name = unique_name("taken")
    TusClient(server.url).wait_installed(client.location(MODEL, complete=True, name=name))
    before = stored_files(server)
    refused(client.create(MODEL, complete=True, name=name), 409, "already_installed")
    assert stored_files(server) == before


def test_a_body_that_is_not_gguf_fails_the_upload(client: RufhClient, server: ServerProcess) -> None:
    response = client.create(b"PK\x03\x04" + MODEL[4:], complete=True)
    refused(response, 400, "not_gguf")
    assert response.headers["Upload-Complete"] == "?1"  # the upload is over: resuming cannot help
    status = TusClient(server.url).status(response.headers["Location"])
    assert status["state"] == "failed" and status["offset"] == 0


def test_an_upload_larger_than_the_disk_is_507(client: RufhClient, server: ServerProcess) -> None:
    disk = os.statvfs(server.staging_dir)
    length = disk.f_bavail * disk.f_frsize + 2 * 1024**3
    if length > 256 * 1024**3:
        pytest.skip("the disk is larger than --max-size")
    with nothing_stored(server):
        refused(client.create(length=length), 507, "insufficient_storage")


def test_an_upload_over_max_size_is_413_with_the_limit(client: RufhClient) -> None:
    response = client.create(length=1024**4)
    refused(response, 413, "too_large")
    assert "max-size=" in response.headers["Upload-Limit"]


def test_a_page_of_another_site_is_refused(client: RufhClient, server: ServerProcess) -> None:
    with nothing_stored(server):
        response = client.create(MODEL, complete=True, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    location = client.location(length=len(MODEL))
    foreign = {"Origin": "https://evil.example"}
    assert client.append(location, MODEL[:10], 0, headers=foreign).status_code == 403
    assert client.delete(location, headers=foreign).status_code == 403
    assert client.offset(location) == 0


def test_a_rebinding_host_name_is_refused(client: RufhClient, server: ServerProcess) -> None:
    response = client.create(MODEL, complete=True, headers={"Host": "attacker.example"})
    assert response.status_code == 421
    location = client.location(length=len(MODEL))
    assert client.request("HEAD", resource(location), {"Host": "attacker.example"}).status_code == 421


def test_a_creation_declaring_a_digest_resumes_the_same_file(client: RufhClient) -> None:
    """Resume from anywhere (server/dedupe.py), the RUFH way: Repr-Digest names the file."""
    model = gguf_bytes(tensors=3, tensor_elems=777)  # bytes no other test installs (they would be linked)
    name, digest = unique_name("again"), {"Repr-Digest": sha256_field(model)}
    first = client.location(model[:3000], length=len(model), name=name, headers=digest)
    again = client.create(length=len(model), name=name, headers=digest)
    assert again.status_code == 201
    assert again.headers["Modeldrop-Match"] == "resumed"
    assert again.headers["Location"] == first
    assert (again.headers["Upload-Offset"], again.headers["Upload-Complete"]) == ("3000", "?0")


def test_a_creation_of_installed_bytes_under_a_new_name_is_linked(client: RufhClient, server: ServerProcess) -> None:
    digest = {"Repr-Digest": sha256_field(MODEL)}
    tus = TusClient(server.url)
    tus.wait_installed(client.location(MODEL, complete=True, name=unique_name("original"), headers=digest))
    copy = unique_name("copy")
    response = client.create(length=len(MODEL), name=copy, headers=digest)  # nothing sent
    assert response.status_code == 201
    assert response.headers["Modeldrop-Match"] == "linked"
    assert response.headers["Upload-Complete"] == "?1"
    assert tus.wait_installed(response.headers["Location"])["final_name"] == copy
    assert (server.models_dir / copy).read_bytes() == MODEL
