"""The results as markdown: figures (median [min–max]), ratios pair by pair, and the targets."""

from __future__ import annotations

import statistics
from typing import Any

from bench.limits import MACHINE, TCP_FILE_SHA256, TCP_SHA256
from bench.paths import BROWSER, BROWSER_CEILING, BROWSER_CEILING_CONCURRENT, CLI, RSYNC, SENDFILE_CLIENT
from bench.stats import fmt, pair_ratios, summary

PEERS = ("tuspyserver", "tus-node")
STACK = ("uvicorn-store", "uvicorn-store-sha256")  # bench/stack_app.py: modeldrop's stack minus everything tus
WORKLOAD_NAMES = {"one": "one PATCH", "chunked": "64 MiB PATCHes", "ref4g": "4 GiB reference (one PATCH)"}

Results = dict[str, dict[str, list[dict[str, Any]]]]
CLI_TO_CLIENT = 0.95  # `modeldrop upload` ≥ this × the neutral sendfile client, to the same server
CLI_TO_RSYNC = 3.0    # `modeldrop upload` ≥ this × rsync --partial over SSH
PAGE_TO_CLI = 0.6     # the web page ≥ this × `modeldrop upload`
SERVER_TO_MACHINE = 0.9  # one PATCH with fsync on ≥ this × the machine's limit; 64 MiB PATCHes ≥ this × one PATCH
RUFH_TO_TUS = 0.95    # a RUFH upload in one request ≥ this × tus 1.0's one PATCH


def _col(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [run[key] for run in runs if run.get(key) is not None]


def _median(runs: list[dict[str, Any]], key: str) -> float:
    s = summary(_col(runs, key))
    return s[0] if s else float("nan")


def _fastest_peer(by_server: dict[str, list[dict[str, Any]]]) -> str | None:
    peers = [name for name in PEERS if name in by_server]
    return max(peers, key=lambda name: _median(by_server[name], "mbps")) if peers else None


def render(meta: dict[str, Any], results: Results) -> str:
    gib = meta["size"] / 1024**3
    done = max((len(runs) for by_server in results.values() for runs in by_server.values()), default=0)
    lines = [f"# modeldrop bench, {meta['date']}", "",
             f"`bash bench/run.sh` — upload {gib:g} GiB, {done} of {meta['reps']} repetitions completed, servers interleaved "
             f"(order rotated per repetition), a fresh server and empty folder per upload; neutral raw-socket client "
             f"sending with `sendfile` from a page-cached random file with a real GGUF header. MB = 10^6 bytes. "
             f"Figures: median [min–max]; ratios pair by pair within this run. modeldrop commit {meta['commit']}"
             f"{' (' + meta['modeldrop_dir'] + ')' if meta['modeldrop_dir'] and 'exp' in meta['modeldrop_dir'] else ''}"
             f"{', serve ' + ' '.join(meta['modeldrop_args']) if meta['modeldrop_args'] else ''}. "
             f"Run took {meta['elapsed_s'] / 60:.1f} min. Machine: {meta.get('load', '?')}.", ""]
    if meta.get("label"):
        lines += [f"Note: {meta['label']}", ""]
    for workload in ("one", "chunked", "ref4g"):
        by_server = results.get(workload)
        if not by_server:
            continue
        lines += [f"## {WORKLOAD_NAMES[workload]}{'' if workload == 'ref4g' else f', {gib:g} GiB'}", "",
                  "| server | MB/s | idle RSS MiB | peak RSS MiB | RSS growth MiB | CPU-s | page faults (thousands) | "
                  "page cache growth MiB | last byte → installed s | bytes identical |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, runs in by_server.items():
            lines.append(f"| {name} | {fmt(_col(runs, 'mbps'))} | {fmt(_col(runs, 'idle_rss_mib'))} | "
                         f"{fmt(_col(runs, 'peak_rss_mib'))} | {fmt(_col(runs, 'rss_growth_mib'), 1)} | "
                         f"{fmt(_col(runs, 'cpu_s'), 1)} | {fmt(_col(runs, 'faults_k'))} | "
                         f"{fmt(_col(runs, 'cache_growth_mib'))} | "
                         f"{fmt(_col(runs, 'installed_s'), 2)} | {all(r['identical'] for r in runs)} |")
        lines.append("")
    for count, size in _concurrent_runs(meta):
        if concurrent_key(count) not in results:
            continue
        lines += [f"## {count} concurrent uploads of {size // 1024**2} MiB (one PATCH each), "
                  "HEADs on 4 other idle uploads every 10 ms", "",
                  "| server | aggregate MB/s | HEAD p50 ms | HEAD p99 ms | HEADs during load | CPU-s | bytes identical |",
                  "|---|---|---|---|---|---|---|"]
        for name, runs in results[concurrent_key(count)].items():
            lines.append(f"| {name} | {fmt(_col(runs, 'mbps'))} | {fmt(_col(runs, 'head_p50_ms'), 1)} | "
                         f"{fmt(_col(runs, 'head_p99_ms'), 1)} | {fmt(_col(runs, 'head_n'))} | "
                         f"{fmt(_col(runs, 'cpu_s'), 1)} | {all(r['identical'] for r in runs)} |")
        lines.append("")
    if "paths" in results:
        lines += [f"## Upload paths people take, {gib:g} GiB, to installed (modeldrop with fsync on)", "",
                  "Timed from starting the client process to its end (the page: from the click on Upload to the "
                  "card showing installed); PATCH MB/s: to the PATCH's answer. Client CPU-s: the client's own "
                  "processes (for rsync: rsync and ssh on the sending side).", "",
                  "| path | MB/s | seconds | PATCH MB/s | client CPU-s | server CPU-s | bytes identical |",
                  "|---|---|---|---|---|---|---|"]
        for name, runs in results["paths"].items():
            lines.append(f"| {name} | {fmt(_col(runs, 'mbps'))} | {fmt(_col(runs, 'seconds'), 2)} | "
                         f"{fmt(_col(runs, 'patch_mbps'))} | {fmt(_col(runs, 'client_cpu_s'), 1)} | "
                         f"{fmt(_col(runs, 'server_cpu_s'), 1)} | {_identical(runs)} |")
        lines.append("")
    if "limits" in results:
        lines += ["## Limits of the machine (same source file)", "",
                  "An upload that must arrive, be hashed and be durable goes through all three of the first rows; "
                  "their minimum, per repetition, is the machine's limit. The CPU limit does the receiving and the "
                  "hashing at once, with the sender on the same cores, as every upload here must; the last two rows "
                  "combine them as a server would (buffered writes, no sync).", "", "| what | MB/s |", "|---|---|"]
        for name, runs in results["limits"].items():
            which = sorted({run["which"] for run in runs if run.get("which")})
            note = f" — {', '.join(which)}" if which else ""
            lines.append(f"| {name}{note} | {fmt(_col(runs, 'mbps'))} |")
        lines.append("")
    skipped = meta.get("skipped") or {}
    if skipped:
        lines += ["## Skipped", "", *(f"- {workload}: {reason}" for workload, reason in skipped.items()), ""]
    lines += _ratios(results)
    lines += _targets(meta, results)
    return "\n".join(lines) + "\n"


def _ratios(results: Results) -> list[str]:
    rows = []
    limits = results.get("limits", {})
    for workload in ("one", "chunked", *(key for key in results if key.startswith("concurrent"))):
        by_server = results.get(workload, {})
        for mine in ("modeldrop", "modeldrop-nofsync"):
            if mine not in by_server:
                continue
            others = [(peer, _col(by_server[peer], "mbps")) for peer in PEERS + STACK if peer in by_server]
            if not workload.startswith("concurrent"):
                others += [(name, _col(runs, "mbps")) for name, runs in limits.items()]
            for other, values in others:
                ratio = pair_ratios(_col(by_server[mine], "mbps"), values)
                rows.append(f"| {WORKLOAD_NAMES.get(workload, workload)} | {mine} ÷ {other} | {fmt(ratio, 2)} |")
    by_path = results.get("paths", {})
    machine = _col(limits.get(MACHINE, []), "mbps")
    for name, runs in by_path.items():
        if machine:
            rows.append(f"| paths | {name} ÷ {MACHINE} | {fmt(pair_ratios(_col(runs, 'mbps'), machine), 2)} |")
    for server in _path_servers(by_path):
        cli = _col(by_path.get(f"{CLI} → {server}", []), "mbps")
        client = _col(by_path.get(f"{SENDFILE_CLIENT} → {server}", []), "mbps")
        for name, runs in by_path.items():  # CLI variants (--cli-variant) against the same yardstick
            if name.startswith(f"{CLI}@") and name.endswith(f" → {server}") and client:
                rows.append(f"| paths | {name} ÷ {SENDFILE_CLIENT} → {server} | "
                            f"{fmt(pair_ratios(_col(runs, 'mbps'), client), 2)} |")
        for other in (f"{SENDFILE_CLIENT} → {server}", RSYNC, f"{BROWSER} → {server}"):
            if cli and other in by_path:
                rows.append(f"| paths | {CLI} → {server} ÷ {other} | "
                            f"{fmt(pair_ratios(cli, _col(by_path[other], 'mbps')), 2)} |")
    if not rows:
        return []
    return ["## Ratios (MB/s, pair by pair per repetition)", "", "| workload | ratio | median [min–max] |",
            "|---|---|---|", *rows, ""]


def _targets(meta: dict[str, Any], results: Results) -> list[str]:
    rows: list[tuple[str, str, bool | None]] = []
    gib = meta["size"] / 1024**3
    limits = results.get("limits", {})
    machine = _col(limits.get(MACHINE, []), "mbps")
    cpu = _col(limits.get(TCP_SHA256, []), "mbps")
    cpu_name = TCP_SHA256.split(":")[0]
    which = sorted({run["which"] for run in limits.get(MACHINE, []) if run.get("which")})
    by_path = results.get("paths", {})
    for server in _path_servers(by_path):
        cli = _col(by_path.get(f"{CLI} → {server}", []), "mbps")
        client = _col(by_path.get(f"{SENDFILE_CLIENT} → {server}", []), "mbps")
        if cli and client:
            ratio = statistics.median(pair_ratios(cli, client))
            rows.append((f"`modeldrop upload` ≥ {CLI_TO_CLIENT} × the sendfile client, to installed ({server})",
                         f"{ratio:.2f}", ratio >= CLI_TO_CLIENT))
        patch_only = _col(by_path.get(f"{SENDFILE_CLIENT} → {server}", []), "patch_mbps")
        if cli and patch_only:  # the harsher yardstick: the CLI's whole run against the client's PATCH alone
            ratio = statistics.median(pair_ratios(cli, patch_only))
            rows.append((f"(reference) `modeldrop upload`, start to installed, ÷ the sendfile client's PATCH alone "
                         f"({server})", f"{ratio:.2f}", None))
        rsync = _col(by_path.get(RSYNC, []), "mbps")
        if cli and rsync:
            ratio = statistics.median(pair_ratios(cli, rsync))
            rows.append((f"`modeldrop upload` (verified, installed) ≥ {CLI_TO_RSYNC:g} × rsync --partial over SSH "
                         f"({server})", f"{ratio:.2f}", ratio >= CLI_TO_RSYNC))
        page = _col(by_path.get(f"{BROWSER} → {server}", []), "mbps")
        if cli and page:
            ratio = statistics.median(pair_ratios(page, cli))
            rows.append((f"the page ({BROWSER}) ≥ {PAGE_TO_CLI:g} × `modeldrop upload`, to installed ({server})",
                         f"{ratio:.2f}", ratio >= PAGE_TO_CLI))
        ceiling = _col(by_path.get(BROWSER_CEILING, []), "mbps")
        if page and ceiling:
            ratio = statistics.median(pair_ratios(page, ceiling))
            rows.append((f"(reference) the page, to installed, ÷ Chromium's own ceiling ({BROWSER_CEILING}) "
                         f"({server})", f"{ratio:.2f}", None))
    one, concurrent = _col(by_path.get(BROWSER_CEILING, []), "mbps"), by_path.get(BROWSER_CEILING_CONCURRENT, [])
    if one and concurrent:  # above 1: Chromium's limit is per request, not per browser
        ratio = statistics.median(pair_ratios(_col(concurrent, "mbps"), one))
        best = sorted({str(run["requests"]) for run in concurrent})
        rows.append((f"(reference) {BROWSER_CEILING_CONCURRENT} (best N: {', '.join(best)}) ÷ {BROWSER_CEILING}",
                     f"{ratio:.2f}", None))
    for workload in ("one", "chunked"):
        by_server = results.get(workload, {})
        name = WORKLOAD_NAMES[workload]
        if "modeldrop" in by_server and machine and workload == "one":
            ratio = statistics.median(pair_ratios(_col(by_server["modeldrop"], "mbps"), machine))
            rows.append((f"fsync on ≥ {SERVER_TO_MACHINE} × the machine's limit [{', '.join(which) or '?'}] ({name})",
                         f"{ratio:.2f}", ratio >= SERVER_TO_MACHINE))
            if cpu:  # what stops it when the three limits, each measured alone, cannot all be had at once
                ratio = statistics.median(pair_ratios(_col(by_server["modeldrop"], "mbps"), cpu))
                rows.append((f"(reference) fsync on ÷ the {cpu_name} ({name})", f"{ratio:.2f}", None))
        if workload == "chunked" and "modeldrop" in by_server and "modeldrop" in results.get("one", {}):
            ratio = statistics.median(pair_ratios(_col(by_server["modeldrop"], "mbps"),
                                                  _col(results["one"]["modeldrop"], "mbps")))
            rows.append((f"64 MiB PATCHes ≥ {SERVER_TO_MACHINE} × one PATCH (fsync on)", f"{ratio:.2f}",
                         ratio >= SERVER_TO_MACHINE))
        if workload == "one" and "modeldrop (RUFH)" in by_server and "modeldrop" in by_server:
            rufh, tus = by_server["modeldrop (RUFH)"], by_server["modeldrop"]
            ratio = statistics.median(pair_ratios(_col(rufh, "mbps"), _col(tus, "mbps")))
            rows.append((f"RUFH, the file in one creation request ≥ {RUFH_TO_TUS} × tus 1.0's one PATCH ({gib:g} GiB)",
                         f"{ratio:.2f}", ratio >= RUFH_TO_TUS))
            growth = max(_col(rufh, "rss_growth_mib")) - max(_col(tus, "rss_growth_mib"))
            rows.append(("RUFH peak RSS growth ≤ tus's + 4 MiB", f"{growth:+.1f} MiB", growth <= 4))
            late = _median(rufh, "installed_s") - _median(tus, "installed_s")
            rows.append(("RUFH last byte → installed ≤ tus's + 0.1 s", f"{late:+.2f} s", late <= 0.1))
        peer = _fastest_peer(by_server)
        if "modeldrop-nofsync" in by_server and peer:
            ratio = statistics.median(pair_ratios(_col(by_server["modeldrop-nofsync"], "mbps"),
                                                  _col(by_server[peer], "mbps")))
            rows.append((f"--no-fsync ≥ 1.3 × fastest peer ({name}; {peer})", f"{ratio:.2f}", ratio >= 1.3))
            ceiling = _col(results.get("limits", {}).get(TCP_FILE_SHA256, []), "mbps")
            if ceiling:  # what a server that hashes what it stores could reach at best, to set the FAIL against
                best = statistics.median(pair_ratios(ceiling, _col(by_server[peer], "mbps")))
                rows.append((f"(machine) {TCP_FILE_SHA256} ÷ {peer} ({name})", f"{best:.2f}", None))
            for reference in (r for r in STACK if r in by_server):  # the stack's own cost, before any tus code
                best = statistics.median(pair_ratios(_col(by_server[reference], "mbps"), _col(by_server[peer], "mbps")))
                rows.append((f"(stack) {reference} ÷ {peer} ({name})", f"{best:.2f}", None))
        for mine in ("modeldrop", "modeldrop-nofsync"):
            if mine in by_server:
                growth = max(_col(by_server[mine], "rss_growth_mib"))
                rows.append((f"{mine} peak RSS ≤ idle + 16 MiB ({gib:g} GiB, {name})", f"+{growth:.1f} MiB (max)",
                             growth <= 16))
    one = results.get("one", {}).get("modeldrop")
    if one:
        installed = _median(one, "installed_s")
        if gib <= 4:
            rows.append((f"last byte → installed ≤ 1 s ({gib:g} GiB, sha256 + GGUF check)", f"{installed:.2f} s",
                         installed <= 1.0))
        ref = results.get("ref4g", {}).get("modeldrop")
        if ref:
            base = _median(ref, "installed_s")
            rows.append((f"{gib:g} GiB installed within 1.5 × the 4 GiB time",
                         f"{installed * 1000:.0f} ms vs {base * 1000:.0f} ms = {installed / base:.2f}×",
                         installed <= 1.5 * base))
        cache = max(_col(one, "cache_growth_mib"))
        rows.append((f"page cache grows < 1 GiB during a {gib:g} GiB upload (fsync on)", f"{cache:.0f} MiB (max)",
                     cache < 1024))
    for count, _ in _concurrent_runs(meta):
        concurrent = results.get(concurrent_key(count), {}).get("modeldrop")
        if not concurrent:
            continue
        p99 = _median(concurrent, "head_p99_ms")
        rows.append((f"HEAD p99 ≤ 25 ms during {count} concurrent uploads (fsync on)", f"{p99:.1f} ms", p99 <= 25))
        if machine:
            ratio = statistics.median(pair_ratios(_col(concurrent, "mbps"), machine))
            rows.append((f"{count} concurrent uploads together ≥ {SERVER_TO_MACHINE} × the machine's limit",
                         f"{ratio:.2f}", ratio >= SERVER_TO_MACHINE))
            if cpu:
                ratio = statistics.median(pair_ratios(_col(concurrent, "mbps"), cpu))
                rows.append((f"(reference) {count} concurrent uploads together ÷ the {cpu_name}",
                             f"{ratio:.2f}", None))
    identical = all(r.get("identical", True) for runs in results.values() for rs in runs.values() for r in rs)
    rows.append(("every stored file byte-identical to the source", str(identical), identical))
    return ["## Targets", "", "| target | this run | result |", "|---|---|---|",
            *(f"| {t} | {v} | {_verdict(ok)} |" for t, v, ok in rows), ""]


def concurrent_key(count: int) -> str:
    """The results' workload name of `count` uploads at once."""
    return f"concurrent {count}"


def _concurrent_runs(meta: dict[str, Any]) -> list[tuple[int, int]]:
    return list(zip(meta["concurrent"], meta["concurrent_size"], strict=True))


def _identical(runs: list[dict[str, Any]]) -> str:
    """'–' for a path that stores nothing (the browser's ceiling, into a sink)."""
    checked = [r["identical"] for r in runs if "identical" in r]
    return str(all(checked)) if checked else "–"


def _path_servers(by_path: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The servers the CLI was measured against, in the order first met."""
    prefix = f"{CLI} → "
    return [name[len(prefix):] for name in by_path if name.startswith(prefix)]


def _verdict(ok: bool | None) -> str:
    return "reference, not a target" if ok is None else "PASS" if ok else "FAIL"


if __name__ == "__main__":  # re-render a run's markdown from its JSON: python -m bench.report results/<date>.json
    import json
    import sys
    from pathlib import Path

    saved = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[1]).with_suffix(".md").write_text(render(saved["meta"], saved["results"]))
