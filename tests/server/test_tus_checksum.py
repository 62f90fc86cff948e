"""checksum extension (S1–S4): each algorithm verified; a mismatch is 460, the chunk cut back off."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.support.processes import ServerProcess
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, assert_error, data_path, gguf_bytes, module_server, nothing_stored

server = module_server(fsync=False)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)
ALGORITHMS = ["sha1", "md5", "sha256", "sha512"]


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


@pytest.fixture
def location(client: TusClient) -> str:
    location = client.location(len(MODEL))
    assert client.patch(location, MODEL[:1000], 0).status_code == 204
    return location


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checksum_that_matches_is_stored(client: TusClient, server: ServerProcess, location: str,
                                         algorithm: str) -> None:
    chunk = MODEL[1000:4000]
    response = client.patch(location, chunk, 1000, headers={"Upload-Checksum": checksum(algorithm, chunk)})
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "4000"
    assert data_path(server, location).read_bytes() == MODEL[:4000]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checksum_mismatch_is_460_and_the_chunk_is_discarded(client: TusClient, server: ServerProcess,
                                                             location: str, algorithm: str) -> None:
    chunk = MODEL[1000:4000]
    response = client.patch(location, chunk, 1000, headers={"Upload-Checksum": checksum(algorithm, chunk + b"x")})
    assert_error(response, 460, "checksum_mismatch")
    assert client.offset(location) == 1000
    assert data_path(server, location).read_bytes() == MODEL[:1000]
    assert not (server.staging_dir / "uploads" / f"{location.rsplit('/', 1)[1]}.pending").exists()
    retry = client.patch(location, chunk, 1000, headers={"Upload-Checksum": checksum(algorithm, chunk)})
    assert retry.headers["Upload-Offset"] == "4000"


def test_checksum_mismatch_on_the_first_chunk_leaves_an_empty_file(client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL))
    response = client.patch(location, MODEL[:500], 0, headers={"Upload-Checksum": checksum("sha1", b"other")})
    assert_error(response, 460, "checksum_mismatch")
    assert data_path(server, location).read_bytes() == b""


@pytest.mark.parametrize("header", ["crc32 AAAAAA==", "sha3 AAAA", "sha1 not base64!",
                                    "sha1", "sha1 AAAA", "md5 " + "A" * 28])  # empty / cut digests
def test_checksum_unsupported_or_malformed_is_400_before_storing(client: TusClient, server: ServerProcess,
                                                                 location: str, header: str) -> None:
    with nothing_stored(server):
        response = client.patch(location, MODEL[1000:2000], 1000, headers={"Upload-Checksum": header})
    assert response.status_code == 400
    assert client.offset(location) == 1000


def test_checksum_whole_upload_installs(client: TusClient) -> None:
    location = client.location(len(MODEL))
    response = client.patch(location, MODEL, 0, headers={"Upload-Checksum": checksum("sha256", MODEL)})
    assert response.status_code == 204
    assert client.wait_state(location, "installed")["sha256"] == hashlib.sha256(MODEL).hexdigest()
