"""Resume from anywhere: a creation that declares the file's sha256 continues the unfinished upload of that very
file (same digest, name and length, by the same token) instead of starting again at zero. Real servers and the
real clients: tus-js-client (node), tuspy and the CLI, none of which knows the earlier upload's URL."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tusclient.client import TusClient as TuspyClient

from tests.dedupe.conftest import REFUSED_AT_MOST
from tests.support.cli import run_cli
from tests.support.clients import NodeUpload, require_node
from tests.support.models import MIB, assert_installed
from tests.support.processes import ServerProcess
from tests.support.proxy import Proxy
from tests.support.tus import RawPatch, RawRequest, TusClient, encode_metadata, stored_bytes

STARTED = 9 * MIB  # what the first client sent before it (and its memory of the URL) went away


def start_elsewhere(client: TusClient, model: Path, metadata: dict[str, str]) -> str:
    """An upload another client began and abandoned: created with the digest, the first 9 MiB sent."""
    location = client.location(model.stat().st_size, metadata=metadata)
    response = client.patch(location, model.read_bytes()[:STARTED], 0)
    assert response.status_code == 204, response.text
    return location


def test_a_creation_with_the_digest_continues_the_forgotten_upload(server: ServerProcess, model: Path,
                                                                    digest: str) -> None:
    client = TusClient(server.url)
    metadata = {"filename": model.name, "sha256": digest}
    first = start_elsewhere(client, model, metadata)

    again = client.create(model.stat().st_size, metadata=metadata)
    assert again.status_code == 201, again.text
    assert again.headers["Location"] == first
    assert again.headers["Upload-Offset"] == str(STARTED)
    assert again.headers["Upload-Length"] == str(model.stat().st_size)
    assert again.headers["Modeldrop-Match"] == "resumed"
    assert again.json()["match"] == "resumed" and again.json()["offset"] == STARTED
    assert again.headers["Modeldrop-Status"].endswith(first.rsplit("/", 1)[1])

    response = client.send_file(first, model, offset=STARTED)
    assert response.status_code == 204
    assert_installed(server, first, model)


def test_another_name_length_or_digest_is_a_new_upload(server: ServerProcess, model: Path, digest: str) -> None:
    client = TusClient(server.url)
    size = model.stat().st_size
    first = start_elsewhere(client, model, {"filename": model.name, "sha256": digest})

    others = [
        (size, {"filename": "renamed.gguf", "sha256": digest}),
        (size + 4096, {"filename": model.name, "sha256": digest}),
        (size, {"filename": model.name, "sha256": "ab" * 32}),
        (size, {"filename": model.name}),
    ]
    for length, metadata in others:
        response = client.create(length, metadata=metadata)
        assert response.status_code == 201, response.text
        assert response.headers["Location"] != first, metadata
        assert "Modeldrop-Match" not in response.headers
        assert "Upload-Offset" not in response.headers or response.headers["Upload-Offset"] == "0"
    assert client.offset(first) == STARTED
    assert stored_bytes(server, first) == model.read_bytes()[:STARTED]


def test_a_token_continues_only_the_uploads_it_created(start_server: Callable[..., ServerProcess], model: Path,
                                                       digest: str) -> None:
    server = start_server(token=["alpha-secret", "beta-secret"])
    alpha, beta = TusClient(server.url, token="alpha-secret"), TusClient(server.url, token="beta-secret")
    metadata = {"filename": model.name, "sha256": digest}
    first = start_elsewhere(alpha, model, metadata)

    theirs = beta.create(model.stat().st_size, metadata=metadata)
    assert theirs.status_code == 201 and theirs.headers["Location"] != first
    assert "Modeldrop-Match" not in theirs.headers
    mine = alpha.create(model.stat().st_size, metadata=metadata)
    assert mine.headers["Location"] == first and mine.headers["Modeldrop-Match"] == "resumed"

    # the record keeps a fingerprint of the token, never the token
    records = {path.name: path.read_bytes() for path in (server.staging_dir / "uploads").glob("*.info")}
    assert records and not any(b"secret" in record for record in records.values())
    fingerprints = {json.loads(record)["token_fp"] for record in records.values()}
    assert len(fingerprints) == 2 and all(len(value) == 32 for value in fingerprints)

    # the lookup shows each token its own uploads only
    size = model.stat().st_size
    assert [c["where"] for c in alpha.get_json(f"/api/lookup?size={size}")["candidates"]] == ["upload"]
    assert [c["offset"] for c in beta.get_json(f"/api/lookup?size={size}")["candidates"]] == [0]


def test_tus_js_client_continues_at_the_servers_offset(server: ServerProcess, model: Path, digest: str,
                                                       proxy: Callable[..., Proxy]) -> None:
    """tus-js-client PATCHes at 0 after any creation; the refusal (409, or a broken pipe once the server closes)
    makes it HEAD and go on from there. What it sent of the refused PATCH is what was in flight when the 409 came and
    what the lingering close dropped, not the file."""
    first = start_elsewhere(TusClient(server.url), model, {"filename": model.name, "sha256": digest})
    relay = proxy(server)
    upload = NodeUpload(model, f"{relay.url}/files/", metadata={"sha256": digest}, retry_delays=[0, 500, 1000])
    assert upload.finish(60).endswith(first.rsplit("/", 1)[1])
    # its PATCH at 0 is refused before a byte is read and the connection closed: it sees the 409, or a broken pipe
    seen = [(e["method"], e["status"], e["offset"]) for e in upload.of("response") if e["status"] != 409]
    size = str(model.stat().st_size)
    assert seen == [("POST", 201, str(STARTED)), ("HEAD", 200, str(STARTED)), ("PATCH", 204, size)], \
        upload.transcript()
    assert len(upload.of("retry")) == 1
    rest = model.stat().st_size - STARTED
    assert relay.forwarded < rest + REFUSED_AT_MOST, f"sent {relay.forwarded} bytes for the last {rest}"
    assert_installed(server, first, model)


def test_tuspy_continues_at_the_servers_offset(server: ServerProcess, model: Path, digest: str) -> None:
    """tuspy starts at offset 0 after create_url(): asking the offset (HEAD) before upload() continues where the
    server is; with retries, its retry after the 409 does the same."""
    client = TusClient(server.url)
    endpoint = f"{server.url}/files/"
    metadata = {"filename": model.name, "sha256": digest}
    first = start_elsewhere(client, model, metadata)

    uploader = TuspyClient(endpoint).uploader(file_path=str(model), chunk_size=4 * MIB, metadata=metadata)
    uploader.set_url(uploader.create_url())
    assert uploader.url == first
    uploader.offset = uploader.get_offset()
    assert uploader.offset == STARTED
    uploader.upload(stop_at=STARTED + 4 * MIB)
    assert client.offset(first) == STARTED + 4 * MIB

    retrying = TuspyClient(endpoint).uploader(file_path=str(model), chunk_size=4 * MIB, metadata=metadata,
                                              retries=1, retry_delay=0.1)
    retrying.upload()  # PATCH at 0: 409; tuspy's retry asks the offset and continues from it
    assert retrying.url == first
    assert_installed(server, first, model)


def test_the_cli_continues_an_upload_begun_elsewhere(server: ServerProcess, model: Path, digest: str,
                                                    client_env: dict[str, str], proxy: Callable[..., Proxy]) -> None:
    """No state file knows the upload: with --sha256 (or after hashing, because the server has an unfinished upload
    of this name and size) the creation finds it, and only the rest of the file is sent."""
    first = start_elsewhere(TusClient(server.url), model, {"filename": model.name, "sha256": digest})
    relay = proxy(server)
    result = run_cli(client_env, "upload", str(model), "--server", relay.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"installed {model.name}")
    assert "hashing this one to compare" in result.stderr
    assert "continuing the unfinished upload" in result.stderr
    rest = model.stat().st_size - STARTED
    assert rest <= relay.forwarded < rest + 64 * 1024, f"sent {relay.forwarded} bytes for the last {rest}"
    assert_installed(server, first, model)


def test_a_refused_body_is_not_read_to_its_end(server: ServerProcess, model: Path, digest: str) -> None:
    """A client that PATCHes at 0 after a resumed creation (tus-js-client, Uppy), or sends the file with a creation
    that matched, gets its answer before its body is read, and the connection then closes: a browser that kept
    sending would otherwise put the whole chunk on the wire for nothing (the server would read it to keep the
    connection)."""
    client = TusClient(server.url)
    metadata = {"filename": model.name, "sha256": digest}
    first = start_elsewhere(client, model, metadata)
    size = model.stat().st_size

    refused = RawPatch(first, 0, size)  # the head only: the answer comes before any of the body
    status, headers = refused.response(10) or (0, {})
    assert status == 409 and headers["upload-offset"] == str(STARTED) and headers["connection"] == "close"
    refused.read_all(10)  # the server closes: this returns, rather than waiting for the 24 MiB announced
    refused.close()

    creation = RawRequest(f"{server.url}/files/", "POST", {
        "Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Content-Type": "application/offset+octet-stream",
        "Upload-Metadata": encode_metadata(metadata)}, size)
    status, headers = creation.response(10) or (0, {})
    assert status == 201 and headers["modeldrop-match"] == "resumed" and headers["connection"] == "close"
    assert headers["upload-offset"] == str(STARTED)
    creation.read_all(10)
    creation.close()
    assert client.offset(first) == STARTED


def test_a_creation_with_its_body_fills_a_matched_upload_that_has_none(server: ServerProcess, model: Path,
                                                                       digest: str) -> None:
    client = TusClient(server.url)
    metadata = {"filename": model.name, "sha256": digest}
    first = client.location(model.stat().st_size, metadata=metadata)  # created, then the client went away
    response = client.create(model.stat().st_size, metadata=metadata, body=model.read_bytes()[:4 * MIB])
    assert response.status_code == 201 and response.headers["Location"] == first
    assert response.headers["Modeldrop-Match"] == "resumed" and response.headers["Upload-Offset"] == str(4 * MIB)
    assert stored_bytes(server, first) == model.read_bytes()[:4 * MIB]


@pytest.mark.parametrize("chunk_size", [None, 4 * MIB])
def test_tus_js_client_sending_data_with_its_creation_follows_the_201(
        server: ServerProcess, model: Path, digest: str, proxy: Callable[..., Proxy], chunk_size: int | None) -> None:
    """With uploadDataDuringCreation the 201's Upload-Offset is where tus-js-client goes on: from the server's offset
    when resumed, nowhere when the bytes are installed already (then linked under this name). Its POST's body is not
    read; a POST that meets the closed connection is retried."""
    node = require_node()
    size = model.stat().st_size
    first = start_elsewhere(TusClient(server.url), model, {"filename": "resumed.gguf", "sha256": "22" * 32})
    relay = proxy(server)
    script = Path(__file__).with_name("creation_with_upload.mjs")

    def run(name: str, sha256: str) -> list[dict[str, Any]]:
        argv = [node, str(script), f"{relay.url}/files/", str(model), name, sha256, str(chunk_size or "")]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert result.returncode == 0 and events[-1]["event"] == "success", result.stdout + result.stderr
        return events

    events = run("resumed.gguf", "22" * 32)  # a digest that is not this file's: the upload is never installed
    assert events[-1]["url"].endswith(first.rsplit("/", 1)[1])
    answers = [(e["method"], e["status"]) for e in events if e["event"] == "response"]
    assert answers[0] == ("POST", 201) and all(answer == ("PATCH", 204) for answer in answers[1:])
    assert TusClient(server.url).offset(first) == size
    resumed_bytes = relay.forwarded
    # each POST that met the closed connection put what was in flight on the wire (1-2 MiB on loopback)
    assert resumed_bytes < size - STARTED + 2 * REFUSED_AT_MOST, f"sent {resumed_bytes} for the last {size - STARTED}"

    install = TusClient(server.url).upload_file(model)
    assert_installed(server, install, model)
    before = relay.forwarded
    events = run("linked.gguf", digest)
    assert [(e["method"], e["status"], e["offset"]) for e in events if e["event"] == "response"] == [
        ("POST", 201, str(size))]
    assert relay.forwarded - before < 2 * REFUSED_AT_MOST
    assert os.stat(server.models_dir / "linked.gguf").st_ino == os.stat(server.models_dir / model.name).st_ino
