"""Multimodal sets against the real llama-server in router mode (scripts/build-llama-server.sh; skipped where it is
not built): the set uploaded through modeldrop is one model to llama-server, started with its projector
(`--mmproj`), listed with the image input, loaded through modeldrop's API and answering a request with an image;
a projector sent alone turns the installed text model into that multimodal model."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ggufgen import write_projector, write_runnable_llama
from tests.support.llama import LlamaServer
from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import TusClient

pytestmark = pytest.mark.llama


def png(width: int = 32, height: int = 32) -> bytes:
    """A small RGB gradient, as a PNG: the image sent with the request."""
    rows = b"".join(b"\x00" + b"".join(bytes([x * 8 % 256, y * 8 % 256, 128]) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def listed(llama: LlamaServer, model: str) -> dict[str, Any] | None:
    return next((entry for entry in llama.listing() or [] if entry["id"] == model), None)


def send_set(client: TusClient, paths: list[Path], name: str) -> list[str]:
    uploads = []
    for path in paths:
        metadata = {"filename": path.name, "set": name, "set_size": str(len(paths))}
        location = client.location(path.stat().st_size, metadata=metadata)
        assert client.send_file(location, path).status_code == 204
        uploads.append(location)
    return uploads


def ask_with_image(llama: LlamaServer, model: str) -> dict[str, Any]:
    image = base64.b64encode(png()).decode()
    content = [{"type": "text", "text": "hello"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]
    status, body = llama.request("POST", "/v1/chat/completions",
                                 {"model": model, "max_tokens": 4, "temperature": 0,
                                  "messages": [{"role": "user", "content": content}]}, timeout=120)
    assert status == 200, (status, body, llama.log()[-3000:])
    return dict(body)


def test_a_set_uploaded_through_modeldrop_runs_with_its_projector(
        llama_server: LlamaServer, start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(llama_server_url=llama_server.url)
    client = TusClient(server.url)
    model = write_runnable_llama(tmp_path / "tiny.gguf")
    projector = write_projector(tmp_path / "mmproj-tiny-f32.gguf")  # its projection fits tiny's 64-wide embedding
    uploads = send_set(client, [model, projector], "tiny-vision")
    for upload in uploads:
        client.wait_installed(upload)
    outcome = wait_for(lambda: client.status(uploads[1])["llama_server"], 15, "the rescan after the install")
    assert outcome["listed"] is True, outcome

    entry = listed(llama_server, "tiny-vision")
    assert entry is not None, llama_server.listing()
    args = entry["status"]["args"]
    assert args[args.index("--model") + 1].endswith("/tiny-vision/tiny.gguf")
    assert args[args.index("--mmproj") + 1].endswith("/tiny-vision/mmproj-tiny-f32.gguf")
    assert "image" in entry["architecture"]["input_modalities"]
    assert [model["id"] for model in llama_server.listing() or []] == ["tiny-vision"]  # one model, not two

    mine = client.get_json("/api/models/tiny-vision")
    assert mine["kind"] == "set" and mine["llama"]["id"] == "tiny-vision"
    assert mine["llama"]["state"] == "unloaded"
    answer = client.request("POST", "/api/models/tiny-vision/load", headers={"Content-Length": "0"})
    assert answer.status_code == 200, answer.text
    wait_for(lambda: llama_server.states().get("tiny-vision") == "loaded", 120, "llama-server to load the set",
             interval=0.2)
    assert "loaded multimodal model" in llama_server.log()
    body = ask_with_image(llama_server, "tiny-vision")
    assert body["usage"]["completion_tokens"] > 0
    assert body["usage"]["prompt_tokens"] > 20, body["usage"]  # the image's embeddings, not only "hello"


def test_a_projector_sent_alone_makes_the_installed_model_multimodal(
        llama_server: LlamaServer, start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(llama_server_url=llama_server.url)
    client = TusClient(server.url)
    client.wait_installed(client.upload_file(write_runnable_llama(tmp_path / "solo.gguf")))
    wait_for(lambda: listed(llama_server, "solo"), 15, "llama-server to list solo")
    assert listed(llama_server, "solo")["architecture"]["input_modalities"] == ["text"]

    (upload,) = send_set(client, [write_projector(tmp_path / "mmproj-solo.gguf")], "solo")
    client.wait_installed(upload)
    wait_for(lambda: client.status(upload)["llama_server"], 15, "the rescan after the install")

    entry = listed(llama_server, "solo")
    assert entry is not None and "--mmproj" in entry["status"]["args"], entry
    assert entry["status"]["args"][entry["status"]["args"].index("--model") + 1].endswith("/solo/solo.gguf")
    assert "image" in entry["architecture"]["input_modalities"]
    status, _ = llama_server.request("POST", "/models/load", {"model": "solo"})
    assert status == 200
    wait_for(lambda: llama_server.states().get("solo") == "loaded", 120, "llama-server to load solo", interval=0.2)
    assert ask_with_image(llama_server, "solo")["usage"]["completion_tokens"] > 0
