"""/healthz, /readyz, /metrics and the one-line-per-event log, against real servers."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.disk import CreatedEntries
from tests.support.metrics import metric
from tests.support.processes import ServerProcess, free_port, wait_for
from tests.support.tus import TusClient, gguf_bytes, upload_id


def test_healthz_answers_while_alive(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_with_writable_directories(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["problems"] == []


def test_readyz_puts_nothing_in_models(server: ServerProcess) -> None:
    """Compose asks /readyz every few seconds, and llama-server may list models/ at any of those moments."""
    with CreatedEntries(server.models_dir) as created:
        for _ in range(3):
            assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert created.names == []


def test_readyz_names_an_unreachable_redis(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    response = httpx.get(f"{server.url}/readyz", timeout=30)
    assert response.status_code == 503
    assert any("Redis is unreachable" in problem for problem in response.json()["problems"])


def test_readyz_names_a_full_disk_by_its_headroom(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(disk_headroom="1000TiB")
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    assert any("free on the staging filesystem" in problem for problem in response.json()["problems"])


def test_metrics_count_an_upload_from_creation_to_installed(server: ServerProcess) -> None:
    client = TusClient(server.url)
    data = gguf_bytes()
    before = httpx.get(f"{server.url}/metrics").text
    location = client.upload(data)
    client.wait_state(location, "installed")

    after = httpx.get(f"{server.url}/metrics").text
    assert metric(after, "modeldrop_bytes_received_total") - metric(before, "modeldrop_bytes_received_total") == len(data)
    assert metric(after, "modeldrop_uploads_created_total") == metric(before, "modeldrop_uploads_created_total") + 1
    assert metric(after, "modeldrop_uploads_finished_total") == metric(before, "modeldrop_uploads_finished_total") + 1
    assert metric(after, "modeldrop_uploads", 'state="installed"') >= 1
    assert metric(after, "modeldrop_finalize_seconds_count", 'outcome="installed"') >= 1
    assert metric(after, "modeldrop_finalize_queue_depth") == 0
    assert metric(after, "modeldrop_requests_total", 'method="PATCH",status="204"') >= 1


def test_metrics_count_terminated_uploads_and_rejections(server: ServerProcess) -> None:
    client = TusClient(server.url)
    location = client.location(1000)
    assert client.delete(location).status_code == 204
    assert client.create(10, headers={"Tus-Resumable": "0.2.2"}).status_code == 412

    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "modeldrop_uploads_terminated_total") >= 1
    assert metric(text, "modeldrop_requests_total", 'method="POST",status="412"') >= 1


def test_log_has_one_line_per_event_with_the_upload_id(server: ServerProcess) -> None:
    client = TusClient(server.url)
    data = gguf_bytes()
    location = client.upload(data)
    client.wait_state(location, "installed")
    upload = upload_id(location)

    def logged() -> list[str]:
        return [line for line in server.log().splitlines() if f"upload={upload}" in line]

    lines = wait_for(lambda: len(logged()) >= 5 and logged(), 10, "the install to be logged")
    events = [re.search(r"modeldrop\.\w+ (\w+)", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert events[0] == "created"
    assert "progress" in events and "completed" in events and "verifying" in events
    assert events[-1] == "installed"


def test_metrics_method_label_stays_a_small_set(server: ServerProcess) -> None:
    client = TusClient(server.url)
    before = len(httpx.get(f"{server.url}/metrics").text)
    for index in range(60):
        response = client.http.post("/files/", headers={"X-HTTP-Method-Override": f"M{index:04d}"})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "bad_request"
    for method in ("PROPFIND", "MKCOL", "PURGE"):  # methods the HTTP parser knows but nothing here serves
        assert client.http.request(method, "/files/").status_code in (404, 405)
    text = httpx.get(f"{server.url}/metrics").text
    assert "M0001" not in text and "PROPFIND" not in text
    assert metric(text, "modeldrop_requests_total", 'method="other",status="405"') >= 1 or \
        metric(text, "modeldrop_requests_total", 'method="other",status="404"') >= 1
    assert len(text) - before < 2000


@pytest.mark.parametrize(("override", "method"), [("PUT", "POST"), ("GET", "POST"), ("PATCH", "GET")])
def test_method_override_only_turns_post_into_patch_or_delete(server: ServerProcess, override: str,
                                                               method: str) -> None:
    client = TusClient(server.url)
    location = client.location(100)
    response = client.request(method, location, {"X-HTTP-Method-Override": override})
    assert response.status_code == 400, response.text
    assert "X-HTTP-Method-Override" in response.json()["message"]
    deleted = client.request("POST", location, {"X-HTTP-Method-Override": "delete"})
    assert deleted.status_code == 204


def test_readyz_names_directories_by_role_not_path(server: ServerProcess) -> None:
    import shutil

    shutil.rmtree(server.models_dir)
    server.models_dir.write_text("not a directory")
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    problems = response.json()["problems"]
    assert any(problem.startswith("the models directory is not writable") for problem in problems), problems
    assert str(server.data_dir) not in response.text


def test_front_page_without_a_built_ui_shows_no_install_path(start_server: Callable[..., ServerProcess],
                                                             tmp_path: Path) -> None:
    server = start_server(web_dir=tmp_path / "no-ui")
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 200 and "not built" in response.text
    assert str(tmp_path) not in response.text and "/work" not in response.text and "/" + "root" not in response.text
