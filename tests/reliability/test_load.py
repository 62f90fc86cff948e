"""Load: 64 concurrent small uploads and 4 large ones (tus-js-client) for a bounded time: no 5xx anywhere
(the server's own request counter says so), no byte lost, everything installed byte-identical.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.clients import NodeUpload
from tests.support.figures import Figures
from tests.support.models import MIB, make_models, sha256_of
from tests.support.processes import ServerProcess
from tests.support.tus import TusClient


def small_upload(base_url: str, path: Path) -> tuple[str, list[int]]:
    """Creation, then the file in two PATCHes; returns the URL and every status seen."""
    client = TusClient(base_url)
    data = path.read_bytes()
    statuses = []
    created = client.create(len(data), metadata={"filename": path.name})
    statuses.append(created.status_code)
    location = created.headers["Location"]
    half = len(data) // 2
    for start, end in ((0, half), (half, len(data))):
        statuses.append(client.patch(location, data[start:end], start).status_code)
    return location, statuses


class Probe:
    """Meanwhile, every 100 ms: how long /healthz takes (a blocked event loop shows) and the server's RSS."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.worst_latency = 0.0
        self.first_rss = self.peak_rss = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        for line in Path(f"/proc/{self.server.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            started = time.monotonic()
            httpx.get(f"{self.server.url}/healthz", timeout=30)
            self.worst_latency = max(self.worst_latency, time.monotonic() - started)
            self.peak_rss = max(self.peak_rss, self._rss())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def server_5xx(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {f"{method} {status}": float(value) for method, status, value in
            re.findall(r'modeldrop_requests_total\{method="(\w+)",status="(5\d\d)"\} ([0-9.e+]+)', text)}


def run_load(start_server: Callable[..., ServerProcess], tmp_path: Path, record: Figures, *, small: int, large: int,
             large_mib: float) -> None:
    server = start_server(max_uploads=small + large + 8)
    smalls = make_models(tmp_path / "small", small, 0.25, "small")
    larges = make_models(tmp_path / "large", large, large_mib, "large")
    record.fault_kind = "concurrent uploads"
    record.faults = small + large
    started = time.monotonic()
    probe = Probe(server)
    nodes = [NodeUpload(path, f"{server.url}/files/", chunk_size=8 * MIB, retry_delays=[500, 1000, 2000])
             for path in larges]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=small) as pool:
            results = list(pool.map(lambda path: small_upload(server.url, path), smalls))
        urls = {path.name: url for path, (url, _) in zip(smalls, results)}
        bad_statuses = [statuses for _, statuses in results if statuses != [201, 204, 204]]
        for path, node in zip(larges, nodes):
            urls[path.name] = node.finish(timeout=240)
    finally:
        probe.stop()
        for node in nodes:
            node.stop()
    problems = [f"small uploads answered {statuses}" for statuses in bad_statuses[:5]]
    for path in smalls + larges:
        state = TusClient(server.url).wait_state(urls[path.name], "installed", "failed", timeout=120, interval=0.2,
                                                 through_restarts=True)
        if state["state"] != "installed":
            record.lost += 1
            problems.append(f"{path.name}: {state['state']}: {state['reason']}")
        elif sha256_of(server.models_dir / path.name) != sha256_of(path):
            record.corrupt += 1
            problems.append(f"{path.name}: installed with other bytes")
        else:
            record.completed += 1
    if probe.worst_latency > 5.0:  # generous: this 2-core machine is shared; the figure is reported
        problems.append(f"/healthz took {probe.worst_latency:.1f}s under load: the event loop is blocked")
    if probe.peak_rss - probe.first_rss > 300 * MIB:
        problems.append(f"the server's memory grew from {probe.first_rss // MIB} to {probe.peak_rss // MIB} MiB")
    errors = server_5xx(server)
    if errors:
        problems.append(f"the server answered 5xx: {errors}")
    record.notes.append(f"{small} × 256 KiB + {large} × {large_mib:g} MiB in {time.monotonic() - started:.0f}s, "
                        f"5xx={int(sum(errors.values()))}, /healthz ≤{probe.worst_latency * 1000:.0f} ms, "
                        f"server RSS {probe.first_rss // MIB}→{probe.peak_rss // MIB} MiB")
    assert not problems, "\n".join(problems)


def test_load_64_small_and_4_large_uploads(start_server: Callable[..., ServerProcess], tmp_path: Path,
                                           figures: Callable[..., Figures]) -> None:
    run_load(start_server, tmp_path, figures("load: 64 small + 4 large concurrent uploads"), small=64, large=4,
             large_mib=64)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # the suite's default is 300 s
def test_soak_load(start_server: Callable[..., ServerProcess], tmp_path: Path,
                   figures: Callable[..., Figures]) -> None:
    run_load(start_server, tmp_path, figures("load soak: 64 small + 4 × 512 MiB"), small=64, large=4,
             large_mib=512)
