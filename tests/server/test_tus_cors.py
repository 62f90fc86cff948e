"""CORS for browsers (Uppy, tus-js-client) and Location behind a proxy (--trust-proxy)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import ServerProcess
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, module_server, running_server

server = module_server(fsync=False)
TUS_HEADERS = ["Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires", "Upload-Concat",
               "Upload-Defer-Length", "Tus-Version", "Tus-Resumable", "Tus-Extension", "Tus-Max-Size",
               "Tus-Checksum-Algorithm", "Modeldrop-Status"]
PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH",
             "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type,authorization"}


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("cors"), fsync=False, cors_origins="https://ok.example") as running:
        yield running


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("proxy"), fsync=False, trust_proxy=True) as running:
        yield running


def test_cors_preflight_allows_tus_methods_and_headers(client: TusClient) -> None:
    response = client.options("/files/" + "a" * 32, headers=PREFLIGHT)
    assert response.status_code in (200, 204)
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"POST", "HEAD", "PATCH", "DELETE", "OPTIONS"} <= methods
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    for header in ("tus-resumable", "upload-offset", "content-type", "authorization"):
        assert header in allowed
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")


def test_cors_responses_expose_every_tus_header(client: TusClient) -> None:
    response = client.create(100, headers={"Origin": "https://app.example"})
    assert response.status_code == 201
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {h.lower() for h in TUS_HEADERS} <= exposed


def test_cors_error_responses_carry_cors_headers(client: TusClient) -> None:
    response = client.head("/files/" + "b" * 32, headers={"Origin": "https://app.example"})
    assert response.status_code == 404
    assert "Access-Control-Allow-Origin" in response.headers


def test_cors_disallowed_origin_is_refused(restricted: ServerProcess) -> None:
    tus = TusClient(restricted.url)
    refused = tus.options("/files/", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert refused.status_code == 400
    assert "Access-Control-Allow-Origin" not in refused.headers
    allowed = tus.options("/files/", headers={**PREFLIGHT, "Origin": "https://ok.example"})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    simple = tus.create(100, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in simple.headers


def test_proxy_headers_ignored_unless_trusted(client: TusClient, server: ServerProcess) -> None:
    response = client.create(100, headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
                                           "Forwarded": "host=evil2.example;proto=https"})
    assert response.headers["Location"].startswith(f"{server.url}/files/")


@pytest.mark.parametrize(("headers", "base"), [
    ({"X-Forwarded-Host": "models.example", "X-Forwarded-Proto": "https"}, "https://models.example"),
    ({"X-Forwarded-Host": "models.example:8443", "X-Forwarded-Proto": "https"}, "https://models.example:8443"),
    ({"X-Forwarded-Host": "models.example:443", "X-Forwarded-Proto": "https"}, "https://models.example"),
    ({"Forwarded": 'for=1.2.3.4;host="fw.example";proto=https'}, "https://fw.example"),
    ({"Forwarded": "host=fw.example;proto=https", "X-Forwarded-Host": "x.example"}, "https://fw.example"),
    ({"X-Forwarded-Proto": "gopher"}, None),
    ({"X-Forwarded-Host": "bad host/evil"}, None),
])
def test_proxy_location_uses_forwarded_headers_when_trusted(proxied: ServerProcess, headers: dict[str, str],
                                                            base: str | None) -> None:
    location = TusClient(proxied.url).location(100, headers=headers)
    assert location.startswith(f"{base or proxied.url}/files/")
