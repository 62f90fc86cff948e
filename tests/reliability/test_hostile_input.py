"""Hostile input sent to a REAL server: fuzzed tus headers, nasty file names, oversized headers, slowloris,
requests without credentials. Never a 5xx, never a file outside the data directory, the server stays up.
"""

from __future__ import annotations

import base64
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ggufgen import write_model
from tests.support.figures import Figures
from tests.support.processes import ServerProcess
from tests.support.tus import TusClient, gguf_bytes, raw_request

TUS_HEADERS = ["Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Defer-Length", "Upload-Metadata",
               "Upload-Concat", "Upload-Checksum", "Content-Type", "X-HTTP-Method-Override", "Content-Length"]
MODEL = gguf_bytes()

# header values: plausible, borderline and hostile (text that http.client can put on the wire: no CR/LF/NUL)
wire_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)
numbers = st.one_of(st.integers(-5, 2**70).map(str), st.sampled_from(["", " 1", "+1", "1.0", "0x10", "1e3", "٣",
                                                                      "18446744073709551616", "-0", "00", "1 2"]))
b64 = st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode())
metadata = st.one_of(
    wire_text,
    st.lists(st.tuples(st.sampled_from(["filename", "sha256", "name", "", "filename ", "a,b", "é"]),
                       st.one_of(b64, wire_text)), max_size=4)
    .map(lambda pairs: ",".join(f"{key} {value}" for key, value in pairs)),
)
header_value = {
    "Tus-Resumable": st.sampled_from(["1.0.0", "1.0.0", "0.2.2", "", "1.0.0 ", "1.0"]),
    "Upload-Length": numbers,
    "Upload-Offset": numbers,
    "Upload-Defer-Length": st.sampled_from(["1", "0", "", "2", "true"]),
    "Upload-Metadata": metadata,
    "Upload-Concat": st.one_of(st.sampled_from(["partial", "final;", "final", "final;/files/../../etc/passwd",
                                                "final;http://127.0.0.1:1/files/" + "a" * 32]), wire_text),
    "Upload-Checksum": st.one_of(st.tuples(st.sampled_from(["sha1", "md5", "sha256", "crc32", ""]), b64)
                                 .map(" ".join), wire_text),
    "Content-Type": st.sampled_from(["application/offset+octet-stream", "text/plain", "", "application/offset+octet-stream; x=1"]),
    "X-HTTP-Method-Override": st.one_of(st.sampled_from(["PATCH", "HEAD", "DELETE", "GET", "patch", "", "TRACE"]),
                                        wire_text),
    "Content-Length": numbers,
}
requests = st.tuples(
    st.sampled_from(["POST", "PATCH", "HEAD", "DELETE", "OPTIONS", "GET", "PUT"]),
    st.sampled_from(["/files/", "/files", "/files/{id}", "/files/{id}/", "/files/../../etc/passwd",
                     "/files/%2e%2e%2f%2e%2e%2fescape", "/files/" + "0" * 32, "/api/uploads/{id}",
                     "/api/models/..%2F..%2Fescape", "/api/verify/..", "/files/{id}?x=1"]),
    st.dictionaries(st.sampled_from(TUS_HEADERS), st.none(), max_size=len(TUS_HEADERS))
    .flatmap(lambda names: st.fixed_dictionaries({name: header_value[name] for name in names})),
    st.sampled_from([b"", MODEL[:100], MODEL, b"\x00" * 64, b"GGUF" + os.urandom(60)]),
)

NASTY_NAMES = ["../escape.gguf", "../../escape.gguf", "/abs/escape.gguf", "..", ".", ".hidden.gguf", "a/b.gguf",
               "a\\b.gguf", "con\x00.gguf", "tab\t.gguf", "nl\n.gguf", "esc\x1b[31m.gguf", "rtl\u202egguf.exe",
               "zero\u200bwidth.gguf", "ＡＢＣ.gguf", "dot\u2024\u2024/escape.gguf", "e\u0301.gguf", "x" * 300 + ".gguf",
               "model.gguf ", " model.gguf", "model.GGUF", "model", "model.bin", "%2e%2e%2fescape.gguf",
               "..\u2215escape.gguf", "\ud83d\ude00.gguf".encode("utf-16", "surrogatepass").decode("utf-16"), ""]


@pytest.fixture
def fuzz_server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(idle_timeout=2, lock_timeout=1, max_size="64MiB", disk_headroom=0)
    yield server


def snapshot(*roots: Path) -> dict[str, int]:
    """Every file under roots with its size (for 'nothing was written outside the data dirs')."""
    found = {}
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    found[path] = os.stat(path).st_size
                except FileNotFoundError:
                    pass
    return found


def outside(tmp_path: Path, server: ServerProcess) -> dict[str, int]:
    """Files a hostile name could reach: everything under the test's tmp dir but the data dir and logs,
    and the names right beside it."""
    found = {path: size for path, size in snapshot(tmp_path).items()
             if not path.startswith(str(server.data_dir) + os.sep) and not path.endswith(".log")}
    found.update({str(path): 0 for path in tmp_path.parent.iterdir() if path.name.startswith("escape")})
    return found


def alive(server: ServerProcess) -> bool:
    return raw_request(server.port, "GET", "/healthz", {})[0] == 200


@pytest.mark.parametrize("examples", [400, pytest.param(5000, marks=[pytest.mark.soak, pytest.mark.timeout(1200)])])
def test_fuzzed_tus_headers_never_5xx_never_write_outside(fuzz_server: ServerProcess, tmp_path: Path,
                                                           figures: Callable[..., Figures], examples: int) -> None:
    server = fuzz_server
    record = figures(f"hostile input: hypothesis-fuzzed tus headers ({examples} requests)", "requests")
    status, headers, _ = raw_request(server.port, "POST", "/files/", {
        "Tus-Resumable": "1.0.0", "Upload-Length": str(len(MODEL) * 4),
        "Upload-Metadata": "filename " + base64.b64encode(b"target.gguf").decode()})
    assert status == 201
    target = headers["location"].rsplit("/", 1)[1]
    before = outside(tmp_path, server)
    bad: list[str] = []

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests)
    def one(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, sent, body = request
        sent = {"Tus-Resumable": "1.0.0", **sent} if "Tus-Resumable" not in sent and len(sent) % 2 else sent
        if "Content-Length" in sent and body and sent["Content-Length"] != str(len(body)):
            body = b""  # a lying Content-Length with a body would desync the connection, not test the server
        try:
            status, _, reply = raw_request(server.port, method, path.replace("{id}", target), sent, body, timeout=15)
        except (ConnectionError, http_client_errors()):
            status, reply = 0, b""  # the server closed a malformed request: allowed
        record.faults += 1
        if status >= 500:
            bad.append(f"{method} {path} {sent} body={len(body)}B -> {status} {reply[:200]!r}")
        assert status < 500, bad[-1]

    try:
        one()
    finally:
        assert alive(server), "the server died"
    time.sleep(1)  # let the finalizer settle whatever got complete
    assert outside(tmp_path, server) == before
    assert "unexpected error" not in server.log(), server.log()[-3000:]
    record.completed = record.faults - len(bad)
    assert not bad


def http_client_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException


def test_nasty_file_names_are_refused_or_installed_inside_models(fuzz_server: ServerProcess, tmp_path: Path,
                                                                figures: Callable[..., Figures]) -> None:
    server = fuzz_server
    record = figures("hostile input: traversal / control / Unicode file names", "names")
    before = outside(tmp_path, server)
    problems, accepted = [], []
    for name in NASTY_NAMES:
        encoded = base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()
        status, headers, reply = raw_request(server.port, "POST", "/files/", {
            "Tus-Resumable": "1.0.0", "Upload-Length": str(len(MODEL)), "Upload-Metadata": f"filename {encoded}",
            "Content-Type": "application/offset+octet-stream"}, MODEL)
        record.faults += 1
        if status == 201:
            accepted.append((name, headers["location"]))
        elif not 400 <= status < 500:
            problems.append(f"{name!r}: {status} {reply[:200]!r}")
    for name, location in accepted:
        state = TusClient(server.url).wait_state(location, "installed", "failed", timeout=30, interval=0.2)
        if state["state"] == "installed":
            record.completed += 1
            final = server.models_dir / state["final_name"]
            if final.parent != server.models_dir or not final.is_file():
                problems.append(f"{name!r} was installed as {state['final_name']!r}, outside models/")
    installed = sorted(os.listdir(server.models_dir))
    if any("/" in entry or entry in (".", "..") or any(ord(c) < 0x20 for c in entry) for entry in installed):
        problems.append(f"models/ holds {installed!r}")
    if outside(tmp_path, server) != before:
        problems.append("a file appeared outside the data directory")
    record.notes.append(f"{len(accepted)} of {len(NASTY_NAMES)} names accepted")
    assert not problems, "\n".join(problems)


def test_oversized_headers_and_urls_get_4xx_or_close(fuzz_server: ServerProcess,
                                                     figures: Callable[..., Figures]) -> None:
    server = fuzz_server
    record = figures("hostile input: oversized headers / URL / metadata", "requests")
    cases = {
        "100 KB header": ("POST", "/files/", {"Tus-Resumable": "1.0.0", "X-Big": "a" * 100_000}),
        "1 MB header": ("POST", "/files/", {"Tus-Resumable": "1.0.0", "X-Big": "a" * 1_000_000}),
        "2000 headers": ("HEAD", "/files/" + "0" * 32, {f"X-H{i}": "v" for i in range(2000)}),
        "100 KB URL": ("HEAD", "/files/" + "a" * 100_000, {"Tus-Resumable": "1.0.0"}),
        "64 KB metadata": ("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Length": "10",
                                               "Upload-Metadata": "filename " + "QUFB" * 16_000}),
    }
    problems = []
    for what, (method, path, headers) in cases.items():
        try:
            status = raw_request(server.port, method, path, headers, timeout=15)[0]
        except (OSError, http_client_errors()):
            status = 0  # closed: allowed
        record.faults += 1
        if status >= 500 or 200 <= status < 400:
            problems.append(f"{what}: {status}")
        if not alive(server):
            problems.append(f"{what}: the server died")
            break
        record.completed += 1
    assert not problems, "\n".join(problems)


def test_slowloris_does_not_starve_other_clients(fuzz_server: ServerProcess,
                                                 figures: Callable[..., Figures]) -> None:
    server = fuzz_server
    record = figures("hostile input: slowloris (200 connections, a header byte a second)", "slow connections")
    stop = threading.Event()
    sockets: list[socket.socket] = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nX-Slow: ")
        sockets.append(sock)
    record.faults = len(sockets)

    def drip() -> None:
        while not stop.wait(1.0):
            for sock in sockets:
                try:
                    sock.send(b"a")
                except OSError:
                    pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    latencies = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            started = time.monotonic()
            status = raw_request(server.port, "OPTIONS", "/files/", {}, timeout=10)[0]
            latencies.append(time.monotonic() - started)
            assert status == 204
            record.completed += 1
            time.sleep(0.1)
    finally:
        stop.set()
        dripper.join(5)
        for sock in sockets:
            sock.close()
    record.notes.append(f"slowest answer to others {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 2.0


ROUTES = [("OPTIONS", "/files/"), ("POST", "/files/"), ("POST", "/files"), ("HEAD", "/files/{id}"),
          ("PATCH", "/files/{id}"), ("DELETE", "/files/{id}"), ("GET", "/api/uploads/{id}"), ("GET", "/api/models"),
          ("GET", "/api/models/victim.gguf"), ("DELETE", "/api/models/victim.gguf"), ("GET", "/api/verify/victim.gguf")]


def test_every_route_without_credentials_is_401_and_writes_nothing(
        start_server: Callable[..., ServerProcess], tmp_path: Path, figures: Callable[..., Figures]) -> None:
    server = start_server(token=["s3cret-token"])
    record = figures("hostile input: every route without / with a wrong token", "requests")
    write_model(server.models_dir / "victim.gguf")
    auth = {"Tus-Resumable": "1.0.0", "Authorization": "Bearer s3cret-token"}
    status, headers, _ = raw_request(server.port, "POST", "/files/", {
        **auth, "Upload-Length": str(len(MODEL)), "Upload-Metadata": "filename " + base64.b64encode(b"t.gguf").decode()})
    assert status == 201
    target = headers["location"].rsplit("/", 1)[1]
    before = snapshot(server.data_dir)
    problems = []
    for credentials in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                        {"Authorization": "Basic czNjcmV0LXRva2Vu"}, {"Authorization": "Bearer "}):
        for method, path in ROUTES:
            headers = {"Tus-Resumable": "1.0.0", "Upload-Length": str(len(MODEL)), "Upload-Offset": "0",
                       "Content-Type": "application/offset+octet-stream",
                       "Upload-Metadata": "filename " + base64.b64encode(b"sneaky.gguf").decode(), **credentials}
            body = MODEL if method in ("PATCH", "POST") else b""
            status = raw_request(server.port, method, path.replace("{id}", target), headers, body)[0]
            record.faults += 1
            if method == "PATCH":  # the same through POST + X-HTTP-Method-Override, for proxies
                override = {**headers, "X-HTTP-Method-Override": "PATCH"}
                overridden = raw_request(server.port, "POST", path.replace("{id}", target), override, body)[0]
                status = status if overridden == 401 else overridden
            if method == "OPTIONS":
                continue  # tus discovery and CORS preflight carry no credentials by design
            if status != 401:
                problems.append(f"{method} {path} with {credentials or 'no credentials'}: {status}")
            else:
                record.completed += 1
    if snapshot(server.data_dir) != before:
        problems.append("an unauthenticated request changed the data directory")
    assert not problems, "\n".join(problems)


def mutated_headers(count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Valid small models with their header broken in a way no reader may accept."""
    rng = random.Random(seed)
    for index in range(count):
        data = bytearray(MODEL)
        kind = index % 5
        if kind == 0:
            data[4:8] = struct.pack("<I", rng.choice([0, 4, 7, 0xFFFF, 0xFFFFFFFF, rng.randrange(4, 2**32)]))
        elif kind == 1:
            data[8:16] = struct.pack("<Q", rng.choice([3, 1000, 2**31, 2**63 - 1, rng.randrange(3, 2**64)]))
        elif kind == 2:
            data[16:24] = struct.pack("<Q", rng.choice([2**20, 2**40, 2**64 - 1, rng.randrange(2**16, 2**64)]))
        elif kind == 3:
            del data[rng.randrange(8, 120):]
        else:
            data[4:] = rng.randbytes(len(data) - 4)
        yield f"mutated-{index:02d}-kind{kind}.gguf", bytes(data)


@pytest.mark.parametrize("count", [25, pytest.param(250, marks=[pytest.mark.soak, pytest.mark.timeout(1200)])])
def test_mutated_gguf_headers_end_failed_with_a_reason(fuzz_server: ServerProcess,
                                                       figures: Callable[..., Figures], count: int) -> None:
    server = fuzz_server
    record = figures(f"hostile input: {count} mutated GGUF headers uploaded as files", "broken files")
    locations = {}
    for name, data in mutated_headers(count, seed=count):
        status, headers, reply = raw_request(server.port, "POST", "/files/", {
            "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)), "Content-Type": "application/offset+octet-stream",
            "Upload-Metadata": "filename " + base64.b64encode(name.encode()).decode()}, data)
        record.faults += 1
        assert status == 201, (name, status, reply[:200])
        locations[name] = headers["location"]
    problems = []
    for name, location in locations.items():
        state = TusClient(server.url).wait_state(location, "installed", "failed", timeout=60, interval=0.2)
        if state["state"] != "failed" or not state["reason"]:
            problems.append(f"{name}: {state['state']} (reason {state['reason']!r})")
            record.corrupt += 1
        else:
            record.completed += 1
    if os.listdir(server.models_dir):
        problems.append(f"models/ holds {os.listdir(server.models_dir)}")
    record.notes.append("completed = failed with a reason, as they must")
    assert not problems, "\n".join(problems)
