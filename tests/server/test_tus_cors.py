"""Browsers: CORS for Uppy/tus-js-client on other sites (with a token, or listed in --cors-origins), refusal
of everything else from another origin or host name (--allowed-hosts), and Location behind a proxy."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.ggufgen import write_model
from tests.support.processes import ServerProcess
from tests.support.tus import TusClient, module_server, nothing_stored, running_server

TOKEN = "t0ken"
server = module_server(fsync=False)  # the default setup: loopback, no token
TUS_HEADERS = ["Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires", "Upload-Concat",
               "Upload-Defer-Length", "Tus-Version", "Tus-Resumable", "Tus-Extension", "Tus-Max-Size",
               "Tus-Checksum-Algorithm", "Modeldrop-Status"]
EVIL = "https://evil.example"
PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH",
             "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type,authorization"}


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("token"), fsync=False, token=[TOKEN]) as running:
        yield running


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("cors"), fsync=False, cors_origins="https://ok.example") as running:
        yield running


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("proxy"), fsync=False, trust_proxy=True,
                        allowed_hosts="*.example") as running:
        yield running


def refused(response, status: int = 403, code: str = "cross_origin") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert "Access-Control-Allow-Origin" not in response.headers


# -- the default setup: nothing on another origin or host name acts ---------------------------------------------


def test_cors_default_refuses_a_cross_origin_upload_and_stores_nothing(server: ServerProcess) -> None:
    tus = TusClient(server.url)
    with nothing_stored(server):
        refused(tus.create(100, headers={"Origin": EVIL}))
        # a "simple" request needs no preflight: text/plain and no custom header but the override
        simple = tus.http.post("/files/", headers={"Origin": EVIL, "Content-Type": "text/plain"}, content=b"GGUF")
        refused(simple)
        refused(tus.create(100, headers={"Origin": "null"}))


def test_cors_default_refuses_cross_origin_reads_and_deletes(server: ServerProcess) -> None:
    write_model(server.models_dir / "victim.gguf")
    tus = TusClient(server.url)
    refused(tus.http.delete("/api/models/victim.gguf", headers={"Origin": EVIL}))
    refused(tus.http.get("/api/models", headers={"Origin": EVIL}))
    refused(tus.http.get("/api/verify/victim.gguf?sha256=1", headers={"Origin": EVIL}))
    # a no-cors fetch or <img> carries no Origin, but says where it comes from
    refused(tus.http.get("/api/models", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}))
    refused(tus.http.delete("/api/models/victim.gguf", headers={"Sec-Fetch-Site": "same-site"}))
    assert (server.models_dir / "victim.gguf").exists()


def test_cors_default_grants_no_preflight(server: ServerProcess) -> None:
    tus = TusClient(server.url)
    for method in ("DELETE", "PATCH", "POST"):
        response = tus.options("/api/models/victim.gguf" if method == "DELETE" else "/files/",
                               headers={**PREFLIGHT, "Origin": EVIL, "Access-Control-Request-Method": method})
        assert response.status_code >= 400
        assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_default_refuses_a_rebinding_host_name(server: ServerProcess) -> None:
    tus = TusClient(server.url)
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
        response = tus.http.get("/api/models", headers={"Host": host})
        refused(response, 421, "unknown_host")
        assert "--allowed-hosts" in response.json()["message"]
        refused(tus.create(100, headers={"Host": host}), 421, "unknown_host")
    assert tus.http.get("/healthz", headers={"Host": "evil.example"}).status_code == 200  # health checks by any name


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST:1", "app.localhost", "10.1.2.3:80"])
def test_cors_default_answers_loopback_names_and_addresses(server: ServerProcess, host: str) -> None:
    assert TusClient(server.url).http.get("/api/models", headers={"Host": host}).status_code == 200


def test_cors_default_serves_its_own_pages(server: ServerProcess) -> None:
    tus = TusClient(server.url)
    same = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    assert tus.create(100, headers=same).status_code == 201
    assert tus.http.get("/api/models", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    localhost = {"Host": f"localhost:{server.port}", "Origin": f"http://localhost:{server.port}"}
    assert tus.create(100, headers=localhost).status_code == 201
    # following a link from another site opens the page
    assert tus.http.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}).status_code == 200
    # another port of the same host is another origin
    refused(tus.create(100, headers={"Origin": "http://127.0.0.1:3000"}))


# -- an origin listed in --cors-origins, and any origin with a token ------------------------------------------------


def test_cors_listed_origin_is_allowed_others_refused(restricted: ServerProcess) -> None:
    tus = TusClient(restricted.url)
    granted = tus.options("/files/", headers={**PREFLIGHT, "Origin": "https://ok.example"})
    assert granted.status_code == 200
    assert granted.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    created = tus.create(100, headers={"Origin": "https://ok.example"})
    assert created.status_code == 201
    assert created.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    refused(tus.options("/files/", headers={**PREFLIGHT, "Origin": EVIL}))
    refused(tus.create(100, headers={"Origin": EVIL}))


def test_cors_token_allows_any_origin_that_sends_it(tokened: ServerProcess) -> None:
    tus = TusClient(tokened.url, token=TOKEN)
    response = tus.options("/files/" + "a" * 32, headers=PREFLIGHT)
    assert response.status_code in (200, 204)
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"POST", "HEAD", "PATCH", "DELETE", "OPTIONS"} <= methods
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    for header in ("tus-resumable", "upload-offset", "content-type", "authorization"):
        assert header in allowed
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
    created = tus.create(100, headers={"Origin": "https://app.example", "Host": "models.example"})
    assert created.status_code == 201
    # without the token the page gets nowhere
    anonymous = TusClient(tokened.url).create(100, headers={"Origin": EVIL})
    assert anonymous.status_code == 401


def test_cors_responses_expose_every_tus_header(tokened: ServerProcess) -> None:
    response = TusClient(tokened.url, token=TOKEN).create(100, headers={"Origin": "https://app.example"})
    assert response.status_code == 201
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {h.lower() for h in TUS_HEADERS} <= exposed


def test_cors_error_responses_carry_cors_headers(tokened: ServerProcess) -> None:
    response = TusClient(tokened.url, token=TOKEN).head("/files/" + "b" * 32, headers={"Origin": "https://app.example"})
    assert response.status_code == 404
    assert "Access-Control-Allow-Origin" in response.headers


def test_cors_method_override_is_refused_cross_origin_too(server: ServerProcess) -> None:
    tus = TusClient(server.url)
    location = tus.location(100)
    meta = "filename " + base64.b64encode(b"x.gguf").decode()
    response = tus.http.post(location, headers={"Origin": EVIL, "X-HTTP-Method-Override": "DELETE",
                                                "Tus-Resumable": "1.0.0", "Upload-Metadata": meta})
    refused(response)
    assert tus.head(location).status_code == 200


# -- behind a proxy -------------------------------------------------------------------------------------------------


def test_proxy_headers_ignored_unless_trusted(server: ServerProcess) -> None:
    response = TusClient(server.url).create(100, headers={"X-Forwarded-Host": "evil.example",
                                                          "X-Forwarded-Proto": "https",
                                                          "Forwarded": "host=evil2.example;proto=https"})
    assert response.headers["Location"].startswith(f"{server.url}/files/")


def test_proxy_checks_the_forwarded_host_and_origin(proxied: ServerProcess) -> None:
    tus = TusClient(proxied.url)
    refused(tus.create(100, headers={"X-Forwarded-Host": "evil.invalid"}), 421, "unknown_host")
    public = {"X-Forwarded-Host": "models.example", "X-Forwarded-Proto": "https"}
    assert tus.create(100, headers={**public, "Origin": "https://models.example"}).status_code == 201
    refused(tus.create(100, headers={**public, "Origin": "http://models.example"}))


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
