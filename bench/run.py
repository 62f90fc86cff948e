"""One command, one run: limits of the machine, modeldrop (fsync on and off), the peers, and the upload paths
people take (the CLI, rsync over SSH, the web page), interleaved.

    bash bench/run.sh [--size 4GiB] [--reps 3] [--quick] [--servers a,b] [--workloads one,chunked,...]

Each repetition runs every workload on every server in turn (the order rotates per repetition), each
upload on a freshly started server with an empty folder; stored bytes are checked against the source's
sha256, then deleted, then `sync`, so no run inherits another's writeback.

Workloads: limits (O_DIRECT disk write, sha256 on one core, loopback TCP into recv_into, their minimum,
the CPU limit: receiving and hashing at once, and two combined references), one (one PATCH), chunked (--chunk PATCHes), concurrent
(16 uploads of 256 MiB at once, then 64 of 64 MiB, HEADs meanwhile), cli (`modeldrop
upload` and the neutral sendfile client, each to installed, on every modeldrop server with fsync on),
rsync (`rsync --partial` over SSH to loopback; openssh-server and rsync are installed through apt when
missing and the bench runs as root), browser (Uppy in /usr/bin/chromium through Playwright). What this
machine lacks for a workload is skipped with the reason, printed and written into the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import limits, paths, proc, report
from bench.servers import BENCH, PYTHON, REPO, SCRATCH, Server, ensure_peers, make_servers
from bench.source import make_source, sha256_file, warm

GIB = 1024**3
MIB = 1024**2
ALL_SERVERS = ["modeldrop", "modeldrop-nofsync", "tuspyserver", "tus-node", "uvicorn-store", "uvicorn-store-sha256"]
ALL_WORKLOADS = ["limits", "one", "rufh", "chunked", "concurrent", "cli", "rsync", "browser"]


def parse_size(text: str) -> int:
    units = {"gib": GIB, "g": GIB, "mib": MIB, "m": MIB}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * factor)
    return int(lowered)


def run_client(job: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run([str(PYTHON), "-m", "bench.client", json.dumps(job)], cwd=REPO, capture_output=True,
                         timeout=timeout, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def check_file(path: Path, expected: str) -> bool:
    return path.exists() and sha256_file(path, drop_cache=True) == expected


# -- uploads --------------------------------------------------------------------------------------------


def measure_upload(server: Server, source: dict[str, Any], chunk: int, filename: str,
                   protocol: str = "tus") -> dict[str, Any]:
    # checking a stored 16 GiB file evicts the sources: read them back now, not during the upload, which
    # would count them in the page cache's growth and slow the client
    warm(Path(source["path"]))
    server.start()
    try:
        time.sleep(0.3)
        idle_kib = proc.status_kib(server.pid, "VmRSS")
        proc.reset_peak(server.pid)
        cpu_before = proc.cpu_seconds(server.pid)
        faults_before = proc.minor_faults(server.pid)
        sampler = proc.Sampler(server.pid)
        modeldrop = server.kind == "modeldrop"
        result = run_client({"mode": "upload", "port": server.port, "base": server.base, "source": source["path"],
                             "length": source["length"], "chunk": chunk, "filename": filename,
                             "poll_status": modeldrop, "protocol": protocol})
        sampler.stop()
        peak_kib = max(proc.status_kib(server.pid, "VmHWM"), sampler.rss_max)
        cpu = proc.cpu_seconds(server.pid) - cpu_before
        faults = proc.minor_faults(server.pid) - faults_before
        if modeldrop and result.get("state") != "installed":
            raise RuntimeError(f"{server.name}: upload ended {result.get('state')}: {result.get('reason')}")
        stored = server.stored_path(result["path"], filename)
        ok = check_file(stored, source["sha256"]) and (not modeldrop or result["sha256"] == source["sha256"])
        if server.kind == "stack" and server.fsync:  # a reference that skipped hashing would not be one
            ok = ok and stored.with_name(stored.name + ".sha256").read_text() == source["sha256"]
    finally:
        server.stop()
        server.clean()
    return {"mbps": source["length"] / 1e6 / (result["t_end"] - result["t_start"]), "patches": result["patches"],
            "idle_rss_mib": idle_kib / 1024, "peak_rss_mib": peak_kib / 1024,
            "rss_growth_mib": (peak_kib - idle_kib) / 1024, "cpu_s": cpu, "faults_k": faults / 1000,
            "cache_growth_mib": sampler.cache_growth_mib,
            "installed_s": result["t_state"] - result["t_end"] if modeldrop else None, "identical": ok}


def wait_installed(server: Server, paths: list[str], deadline: float) -> None:
    import http.client

    pending = {p.rstrip("/").rsplit("/", 1)[-1] for p in paths}
    while pending and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for upload_id in sorted(pending):
            conn.request("GET", f"/api/uploads/{upload_id}")
            state = json.loads(conn.getresponse().read()).get("state")
            if state in ("installed", "failed"):
                pending.discard(upload_id)
        conn.close()
        time.sleep(0.1)


def measure_concurrent(server: Server, source: dict[str, Any], uploads: int, idle: int) -> dict[str, Any]:
    warm(Path(source["path"]))
    if server.kind == "modeldrop":  # room for them all: the default --max-uploads is 64
        server = dataclasses.replace(server, extra_args=(*server.extra_args, "--max-uploads", str(uploads + idle)))
    server.start()
    stop_file = SCRATCH / f"stop-{server.port}"
    try:
        time.sleep(0.3)
        cpu_before = proc.cpu_seconds(server.pid)
        job = {"mode": "concurrent", "port": server.port, "base": server.base, "source": source["path"],
               "length": source["length"], "uploads": uploads, "idle": idle, "filename_prefix": "conc",
               "start_delay": 0.5}
        client = subprocess.Popen([str(PYTHON), "-m", "bench.client", json.dumps(job)], cwd=REPO,
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        idle_paths = json.loads(client.stdout.readline())["idle"]
        prober = subprocess.Popen([str(PYTHON), "-m", "bench.client", json.dumps(
            {"mode": "heads", "port": server.port, "paths": idle_paths, "stop_file": str(stop_file),
             "max_seconds": 300, "interval": 0.01})], cwd=REPO, stdout=subprocess.PIPE, text=True)
        out, _ = client.communicate(timeout=600)
        stop_file.touch()
        probes, _ = prober.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
        cpu = proc.cpu_seconds(server.pid) - cpu_before
        if result["errors"]:
            raise RuntimeError(f"{server.name}: {result['errors'][:3]}")
        if server.kind == "modeldrop":
            wait_installed(server, result["paths"], time.monotonic() + 120)
        ok = all(check_file(server.stored_path(p, f"conc-{i}.gguf"), source["sha256"])
                 for i, p in enumerate(result["paths"]))
        during = [lat for t, lat in json.loads(probes.strip().splitlines()[-1])["samples"]
                  if result["t_start"] <= t <= result["t_end"]]
    finally:
        stop_file.unlink(missing_ok=True)
        server.stop()
        server.clean()
    from bench.stats import percentile

    return {"mbps": uploads * source["length"] / 1e6 / (result["t_end"] - result["t_start"]), "cpu_s": cpu,
            "head_p50_ms": percentile(during, 50) * 1000, "head_p99_ms": percentile(during, 99) * 1000,
            "head_n": len(during), "identical": ok}


# -- the run --------------------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the running server is stopped
    parser = argparse.ArgumentParser(prog="bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=4 * GIB, help="upload size (default 4GiB)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 GiB, 1 repetition, 16 x 64 MiB concurrent")
    parser.add_argument("--chunk", type=parse_size, default=64 * MIB, help="PATCH size of the chunked workload")
    parser.add_argument("--concurrent", type=_counts, default=[16, 64],
                        help="uploads at once in the concurrent workload, one or more: 16,64 (default)")
    parser.add_argument("--concurrent-size", type=_sizes, default=[256 * MIB, 64 * MIB],
                        help="each one's size, one per --concurrent count (default 256MiB,64MiB)")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS))
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    parser.add_argument("--modeldrop-dir", type=Path, default=REPO, help="run modeldrop from a copy (experiments)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="a copy of the code to compare, run as servers modeldrop@NAME, modeldrop-nofsync@NAME")
    parser.add_argument("--cli-variant", action="append", default=[], metavar="NAME=DIR",
                        help="a copy of the code whose `modeldrop upload` also runs in the cli workload, as "
                             "'modeldrop upload@NAME', against the same servers (a before/after of the CLI alone)")
    parser.add_argument("--modeldrop-arg", action="append", default=[], help="extra `serve` flag (repeatable)")
    parser.add_argument("--out", type=Path, help="markdown results (default bench/results/<date>.md)")
    parser.add_argument("--label", default="", help="a note printed in the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.reps, args.concurrent, args.concurrent_size = GIB, 1, [16], [64 * MIB]
    if len(args.concurrent_size) == 1:
        args.concurrent_size *= len(args.concurrent)
    if len(args.concurrent_size) != len(args.concurrent):
        parser.error("give one --concurrent-size, or one per --concurrent count")
    variants = {name: Path(path).resolve() for name, _, path in (v.partition("=") for v in args.variant)}
    cli_variants = {name: Path(path).resolve() for name, _, path in (v.partition("=") for v in args.cli_variant)}
    servers = make_servers(args.servers.split(","), args.modeldrop_dir.resolve(), tuple(args.modeldrop_arg), variants)
    workloads = args.workloads.split(",")
    started = time.monotonic()
    load_before = _machine_load()
    cpu_before = _cpu_times()

    free = shutil.disk_usage(REPO).free
    need = 2 * args.size + max(n * size for n, size in zip(args.concurrent, args.concurrent_size)) + 4 * GIB
    if free < need:
        print(f"bench: {free / GIB:.1f} GiB free, {need / GIB:.1f} GiB needed", file=sys.stderr)
        return 2
    ensure_peers()
    shutil.rmtree(SCRATCH / "data", ignore_errors=True)
    source = make_source(SCRATCH / f"source-{args.size}.gguf", args.size / GIB)
    small = {size: make_source(SCRATCH / f"source-{size}.gguf", size / GIB) for size in set(args.concurrent_size)}
    ref = None
    if args.size > 4 * GIB and any(s.kind == "modeldrop" for s in servers):
        ref = make_source(SCRATCH / f"source-{4 * GIB}.gguf", 4.0)  # installed time is compared with 4 GiB

    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    skipped: dict[str, str] = {}
    args.skipped = skipped

    def record(workload: str, name: str, value: dict[str, Any]) -> None:
        results.setdefault(workload, {}).setdefault(name, []).append(value)
        shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in value.items()}
        print(f"  [{time.monotonic() - started:6.0f}s] {workload:10} {name:18} {shown}", flush=True)
        write_results(args, results, started, load_before, cpu_before)

    def skip(workload: str, reason: str) -> None:
        skipped[workload] = reason
        print(f"bench: skipping {workload}: {reason}", flush=True)

    for workload, missing in (("rsync", paths.ensure_rsync), ("browser", paths.browser_missing)):
        reason = missing() if workload in workloads else None
        if reason is not None:
            skip(workload, reason)
    sshd = paths.Sshd() if "rsync" in workloads and "rsync" not in skipped else None
    try:
        if sshd is not None:
            try:
                sshd.start()
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                skip("rsync", f"sshd could not be started: {error}")
                sshd = None
        for rep in range(args.reps):
            order = servers[rep % len(servers):] + servers[: rep % len(servers)]
            print(f"repetition {rep + 1}/{args.reps}", flush=True)
            if "limits" in workloads:
                limits.measure(source, record)
            for workload, chunk in (("one", 0), ("chunked", args.chunk)):
                if workload in workloads:
                    for server in order:
                        record(workload, server.name, measure_upload(server, source, chunk, "bench.gguf"))
            if "rufh" in workloads:  # the same file in one IETF Resumable Uploads request, paired with "one"
                for server in (s for s in order if s.kind == "modeldrop" and s.fsync):
                    record("one", f"{server.name} (RUFH)", measure_upload(server, source, 0, "bench.gguf", "rufh"))
            if "concurrent" in workloads:
                for count, size in zip(args.concurrent, args.concurrent_size):
                    for server in (s for s in order if s.kind != "stack"):  # references for one upload's speed only
                        record(report.concurrent_key(count), server.name,
                               measure_concurrent(server, small[size], count, 4))
            run_paths(rep, [s for s in order if s.kind == "modeldrop" and s.fsync], workloads, skipped, sshd,
                      source, record, cli_variants)
            if ref is not None and "one" in workloads:
                for server in servers:
                    if server.kind == "modeldrop" and server.fsync:
                        record("ref4g", server.name, measure_upload(server, ref, 0, "bench.gguf"))
    finally:
        if sshd is not None:
            sshd.stop()

    text, out = write_results(args, results, started, load_before, cpu_before)
    print(text)
    print(f"written {out}")
    return 0


def run_paths(rep: int, durable: list[Server], workloads: list[str], skipped: dict[str, str],
              sshd: paths.Sshd | None, source: dict[str, Any], record: Any, cli_variants: dict[str, Path]) -> None:
    """The paths people take, to modeldrop with fsync on (installed means verified and durable): the CLI
    (and its variants) and the sendfile client in an order rotated per repetition, rsync over SSH, the page."""
    if "cli" in workloads:
        for server in durable:
            clients: list[tuple[str, str, Path | None]] = [(paths.SENDFILE_CLIENT, paths.SENDFILE_CLIENT, None),
                                                           (paths.CLI, paths.CLI, None)]
            clients += [(f"{paths.CLI}@{name}", paths.CLI, code) for name, code in cli_variants.items()]
            for label, client, code in clients[rep % len(clients):] + clients[:rep % len(clients)]:
                record("paths", f"{label} → {server.name}", paths.measure_client(server, source, client, code))
    if "rsync" in workloads and sshd is not None:
        record("paths", paths.RSYNC, paths.measure_rsync(sshd, source))
    if "browser" in workloads and "browser" not in skipped:
        for server in durable:
            page_server = dataclasses.replace(server, extra_args=(*server.extra_args, "--web-dir", str(paths.WEB_DIST)))
            record("paths", f"{paths.BROWSER} → {server.name}", paths.measure_browser(page_server, source))
        for name, result in paths.measure_browser_ceilings(source).items():
            record("paths", name, result)


def write_results(args: argparse.Namespace, results: dict[str, Any], started: float, load_before: str,
                  cpu_before: list[int]) -> tuple[str, Path]:
    """Called after every measurement too, so a run cut short still leaves what it measured."""
    elapsed = time.monotonic() - started
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "size": args.size, "reps": args.reps,
            "chunk": args.chunk, "concurrent": args.concurrent, "concurrent_size": args.concurrent_size,
            "elapsed_s": elapsed, "commit": _commit(args.modeldrop_dir), "label": args.label,
            "modeldrop_dir": str(args.modeldrop_dir), "modeldrop_args": args.modeldrop_arg,
            "skipped": getattr(args, "skipped", {}),
            "load": f"{load_before} at the start, {_machine_load()} at the end; "
                    f"{_stolen_share(cpu_before, _cpu_times()):.0%} of the CPU time taken by the host (steal)"}
    text = report.render(meta, results)
    out = args.out or BENCH / "results" / f"{datetime.date.today().isoformat()}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return text, out


def _machine_load() -> str:
    """Other work on this shared machine skews absolute figures; the ratios within one run suffer less."""
    with open("/proc/loadavg") as file:
        load = file.read().split()[0]
    with open("/proc/pressure/cpu") as file:
        pressure = file.readline().split()[2].split("=")[1]
    return f"load {load}, CPU pressure (some, avg60) {pressure} %"


def _cpu_times() -> list[int]:
    with open("/proc/stat") as file:
        return [int(field) for field in file.readline().split()[1:9]]


def _stolen_share(before: list[int], after: list[int]) -> float:
    """On a virtual machine the host takes CPU time away at will (the `steal` column of /proc/stat): a run
    that lost much of it is slower throughout, whichever server it was running."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return spent[7] / max(1, sum(spent))


def _commit(directory: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(directory), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except OSError:
        return "?"
