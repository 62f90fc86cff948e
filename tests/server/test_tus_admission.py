"""Admission at creation: filename rules, installed names (409), sha256 metadata, metadata size,
max_uploads (429), disk space (507); and the GGUF content check on the first bytes."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import disk
from tests.support.processes import ServerProcess
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, assert_error, encode_metadata, gguf_bytes, module_server, running_server

MAX_UPLOADS = 3
server = module_server(fsync=False, max_uploads=MAX_UPLOADS)
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


@pytest.fixture(scope="module")
def overwriting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("overwrite"), fsync=False, allow_overwrite=True) as running:
        yield running


MIB = 1024 * 1024
PARTIAL = {"metadata": {}, "headers": {"Upload-Concat": "partial"}}


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a 64 MiB tmpfs keeping 32 MiB headroom: a little under 32 MiB can be admitted."""
    with disk.small_disk(tmp_path_factory.mktemp("small-disk"), 64) as mount_point, \
            running_server(mount_point, fsync=False, disk_headroom="32MiB") as running:
        yield running


def clear(server: ServerProcess) -> None:
    tus = TusClient(server.url)
    for info in (server.staging_dir / "uploads").glob("*.info"):
        tus.delete(f"/files/{info.stem}")


def staged_bytes(server: ServerProcess) -> int:
    return sum(path.stat().st_size for path in Path(server.staging_dir, "uploads").glob("*.bin"))


@pytest.fixture(autouse=True)
def clean_slate(server: ServerProcess) -> None:
    """max_uploads counts unfinished uploads: each test starts with none."""
    tus = TusClient(server.url)
    for info in (server.staging_dir / "uploads").glob("*.info"):
        tus.delete(f"/files/{info.stem}")


@pytest.mark.parametrize("name", ["model.gguf", "Model.GGUF", "m.GgUf", "Llama 3 8B (Q4_K_M).gguf",
                                  "a-00001-of-00003.gguf", "x" * 250 + ".gguf"])
def test_admission_plain_gguf_names_are_accepted(client: TusClient, name: str) -> None:
    response = client.create(len(MODEL), metadata={"filename": name})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("name", [
    "", "model.bin", "model.gguf.part", ".gguf", ".hidden.gguf", "a/b.gguf", "a\\b.gguf", "../x.gguf",
    "x..gguf", "a\x00b.gguf", "a\x07b.gguf", "a\tb.gguf", "a\u202eb.gguf", "a\u200bb.gguf", "a\ufeffb.gguf",
    "a\u2028b.gguf", " model.gguf", "model.gguf ", "x" * 251 + ".gguf", "é" * 126 + ".gguf",
    "e\u0301.gguf",  # not NFC
    "a-00000-of-00003.gguf", "a-00004-of-00003.gguf",  # impossible shard numbers
    "модель.gguf", "\u2215etc.gguf", "-rf.gguf",  # outside the safe set (look-alikes), leading dash
])
def test_admission_unsafe_or_wrong_names_are_400(client: TusClient, name: str) -> None:
    assert_error(client.create(len(MODEL), metadata={"filename": name}), 400, "invalid_filename")


def test_admission_filename_is_required(client: TusClient) -> None:
    assert_error(client.create(len(MODEL), metadata={}), 400, "invalid_filename")
    assert_error(client.create(len(MODEL), metadata={"name": "m.gguf"}), 400, "invalid_filename")


def test_admission_partials_need_no_filename(client: TusClient) -> None:
    assert client.create(len(MODEL), metadata={}, headers={"Upload-Concat": "partial"}).status_code == 201


def test_admission_installed_name_is_409_at_creation(client: TusClient, server: ServerProcess) -> None:
    location = client.upload(MODEL)
    name = client.wait_state(location, "installed")["final_name"]
    assert_error(client.create(len(MODEL), metadata={"filename": name}), 409, "already_installed")
    (server.models_dir / "taken-00001-of-00002.gguf").unlink(missing_ok=True)
    (server.models_dir / "taken").mkdir()
    assert_error(client.create(len(MODEL), metadata={"filename": "taken-00002-of-00002.gguf"}), 409,
                 "already_installed")


def test_admission_installed_name_is_accepted_with_allow_overwrite(overwriting: ServerProcess) -> None:
    tus = TusClient(overwriting.url)
    name = tus.wait_state(tus.upload(MODEL), "installed")["final_name"]
    assert tus.create(len(MODEL), metadata={"filename": name}).status_code == 201


@pytest.mark.parametrize("value", ["ab" * 32, "AB" * 32])
def test_admission_sha256_metadata_of_64_hex_is_accepted(client: TusClient, value: str) -> None:
    assert client.create(len(MODEL), metadata={"filename": "s.gguf", "sha256": value}).status_code == 201


@pytest.mark.parametrize("value", ["abc", "g" * 64, "ab" * 33, "ab" * 31 + "a "])
def test_admission_sha256_metadata_malformed_is_400(client: TusClient, value: str) -> None:
    assert_error(client.create(len(MODEL), metadata={"filename": "s.gguf", "sha256": value}), 400,
                 "invalid_metadata")


def test_admission_metadata_above_max_metadata_is_400(client: TusClient) -> None:
    header = encode_metadata({"filename": "m.gguf", "pad": "x" * 4000})
    assert len(header) > 4096
    assert_error(client.create(len(MODEL), headers={"Upload-Metadata": header}), 400, "invalid_metadata")


def test_admission_max_uploads_is_429(client: TusClient) -> None:
    for _ in range(MAX_UPLOADS):
        assert client.create(len(MODEL)).status_code == 201
    response = client.create(len(MODEL))
    assert_error(response, 429, "too_many_uploads")
    assert int(response.headers["Retry-After"]) > 0


def test_admission_failed_uploads_do_not_count_against_max_uploads(client: TusClient) -> None:
    refused = client.location(len(MODEL))
    assert_error(client.patch(refused, b"not a model", 0), 400, "not_gguf")
    for _ in range(MAX_UPLOADS):
        assert client.create(len(MODEL)).status_code == 201


def test_admission_without_disk_space_is_507_naming_sizes(tmp_path_factory: pytest.TempPathFactory) -> None:
    assert len(MODEL) == 16800
    with running_server(tmp_path_factory.mktemp("full"), fsync=False, disk_headroom="1000000T") as full:
        response = TusClient(full.url).create(len(MODEL))
        assert_error(response, 507, "insufficient_storage")
        message = response.json()["message"]
        assert "needs 16.4 KiB" in message and "1000000.0 TiB is kept as headroom" in message and " free" in message


def test_admission_partials_count_against_max_uploads(client: TusClient) -> None:
    for _ in range(MAX_UPLOADS):
        assert client.create(len(MODEL), **PARTIAL).status_code == 201  # type: ignore[arg-type]
    assert_error(client.create(len(MODEL), **PARTIAL), 429, "too_many_uploads")  # type: ignore[arg-type]
    assert_error(client.create(len(MODEL)), 429, "too_many_uploads")


def test_admission_a_final_does_not_count_its_own_partials(client: TusClient) -> None:
    split = len(MODEL) // 2
    parts = []
    for piece in (MODEL[:split], MODEL[split:]):
        parts.append(client.location(len(piece), **PARTIAL))  # type: ignore[arg-type]
        assert client.patch(parts[-1], piece, 0).status_code == 204
    assert client.create(len(MODEL)).status_code == 201  # all three slots taken, two by the final's partials
    response = client.create(None, headers={"Upload-Concat": "final;" + " ".join(parts), "Upload-Defer-Length": None})
    assert response.status_code == 201, response.text
    assert client.wait_state(response.headers["Location"], "installed")


def test_admission_partials_reserve_disk_space(small_disk: ServerProcess) -> None:
    clear(small_disk)
    tus = TusClient(small_disk.url)
    assert tus.create(20 * MIB, **PARTIAL).status_code == 201  # type: ignore[arg-type]
    assert_error(tus.create(20 * MIB, **PARTIAL), 507, "insufficient_storage")  # type: ignore[arg-type]
    assert_error(tus.create(20 * MIB), 507, "insufficient_storage")


def test_admission_deferred_length_bytes_are_admitted_before_a_byte_is_stored(small_disk: ServerProcess) -> None:
    clear(small_disk)
    tus = TusClient(small_disk.url)
    body = MODEL + bytes(40 * MIB - len(MODEL))  # fits on the disk, not within its headroom
    location = tus.location(None)
    assert_error(tus.patch(location, body, 0), 507, "insufficient_storage")
    assert tus.offset(location) == 0
    assert_error(tus.create(None, body=body), 507, "insufficient_storage")  # creation-with-upload, deferred
    deferred_partial = tus.location(None, **PARTIAL)  # type: ignore[arg-type]
    assert_error(tus.patch(deferred_partial, body, 0), 507, "insufficient_storage")
    assert staged_bytes(small_disk) == 0
    # a body of unknown size cannot be admitted before it arrives: the client must send Content-Length
    assert_error(tus.patch(location, iter([MODEL]), 0), 411, "length_required")
    assert tus.offset(location) == 0
    assert tus.patch(location, MODEL, 0).status_code == 204  # what fits is taken
    assert_error(tus.patch(location, b"x", len(MODEL), headers={"Upload-Length": str(40 * MIB)}), 507,
                 "insufficient_storage")
    assert tus.offset(location) == len(MODEL)


def test_admission_a_final_is_admitted_against_free_space_before_it_is_assembled(small_disk: ServerProcess) -> None:
    clear(small_disk)
    tus = TusClient(small_disk.url)
    body = MODEL + bytes(12 * MIB - len(MODEL))
    parts = []
    for _ in range(2):
        parts.append(tus.location(len(body), **PARTIAL))  # type: ignore[arg-type]
        assert tus.patch(parts[-1], body, 0).status_code == 204
    before = staged_bytes(small_disk)
    headers = {"Upload-Concat": "final;" + " ".join(parts), "Upload-Defer-Length": None}
    assert_error(tus.create(None, headers=headers), 507, "insufficient_storage")
    assert staged_bytes(small_disk) == before
    tus.delete(parts[1])  # the partials were not taken by the refused final: they can still be deleted or used
    assert tus.head(parts[1]).status_code == 410


def test_admission_creations_arriving_together_cannot_share_the_last_slot(
        start_server: Callable[..., ServerProcess]) -> None:
    racing = start_server(max_uploads=MAX_UPLOADS)  # fsync on: each creation takes long enough to race
    tus = TusClient(racing.url)

    def create(number: int) -> httpx.Response:
        own = TusClient(racing.url)
        return own.create(len(MODEL), **(PARTIAL if number % 2 else {}))  # type: ignore[arg-type]

    for _ in range(5):
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(create, range(30)))
        created = [answer.headers["Location"] for answer in answers if answer.status_code == 201]
        assert sorted({answer.status_code for answer in answers}) == [201, 429]
        assert len(created) == MAX_UPLOADS
        for location in created:
            assert tus.delete(location).status_code == 204
