"""OPTIONS: what the server advertises (C3, C4, C5, K9, W1, S1) — and that every advertised extension works."""

from __future__ import annotations

import pytest

from tests.support.processes import ServerProcess
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, module_server

server = module_server(fsync=False, max_size=123456789)


def test_options_without_tus_resumable_advertises_version(client: TusClient) -> None:
    response = client.options()
    assert response.status_code in (200, 204)
    assert response.headers["Tus-Version"] == "1.0.0"


def test_options_ignores_a_wrong_tus_resumable(client: TusClient) -> None:
    assert client.options(headers={"Tus-Resumable": "0.2.2"}).status_code in (200, 204)


def test_options_lists_exactly_the_supported_extensions(client: TusClient) -> None:
    extensions = client.options().headers["Tus-Extension"].split(",")
    # each of these has its own test module; checksum-trailer and concatenation-unfinished are not offered
    assert sorted(extensions) == sorted(["creation", "creation-with-upload", "creation-defer-length",
                                         "termination", "expiration", "checksum", "concatenation"])


def test_options_advertises_max_size(client: TusClient) -> None:
    assert client.options().headers["Tus-Max-Size"] == "123456789"


def test_options_advertises_checksum_algorithms_lowercase(client: TusClient) -> None:
    algorithms = client.options().headers["Tus-Checksum-Algorithm"].split(",")
    assert "sha1" in algorithms
    assert sorted(algorithms) == ["md5", "sha1", "sha256", "sha512"]


def test_options_on_an_upload_url_works_too(client: TusClient) -> None:
    response = client.options("/files/" + "0" * 32)
    assert response.status_code in (200, 204)
    assert response.headers["Tus-Version"] == "1.0.0"
