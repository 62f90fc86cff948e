"""Profiles modeldrop under one upload workload with py-spy (sampling, non-blocking, all threads).

    .venv/bin/python -m bench.profile [--size 1GiB] [--chunk 64MiB] [--no-fsync] [--modeldrop-dir DIR]

Writes bench/scratch/profile-<label>.txt (collapsed stacks) and prints where the samples fall:
per thread, the leaf frames that take the most samples, and the share of a few functions of interest.
Needs `pip install py-spy` in the venv.
"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import time
from pathlib import Path

from bench.run import GIB, MIB, parse_size, run_client
from bench.servers import REPO, SCRATCH, make_servers
from bench.source import make_source, warm

PY_SPY = REPO / ".venv" / "bin" / "py-spy"
IDLE = ("Runner.run ", "_worker (concurrent/futures/thread.py:81)")  # uvloop waiting in epoll; a pool thread waiting
INTEREST = ("receive_body", "write_batch", "pwritev", "update", "fdatasync", "sync_file_range", "posix_fadvise",
            "receive (starlette", "stream (starlette", "on_body", "data_received", "_run_once", "select")


def summarize(path: Path, top: int = 12) -> str:
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    interest: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] + (" " + frames[0].split(" ")[1] if frames[0].startswith("thread") else "")
        threads[thread][frames[-1]] += count
        total += count
        for name in INTEREST:
            if any(name in frame for frame in frames):
                interest[name] += count
    lines = [f"{total} samples"]
    for thread, leaves in sorted(threads.items(), key=lambda item: -sum(item[1].values())):
        idle = sum(n for frame, n in leaves.items() if frame.startswith(IDLE))
        lines.append(f"-- {thread}: {sum(leaves.values())} samples, {idle} idle (waiting for events or work)")
        lines += [f"   {n:6d}  {frame[:150]}" for frame, n in leaves.most_common(top)]
    lines.append("-- inclusive share of frames of interest")
    lines += [f"   {100 * n / total:5.1f}%  {name}" for name, n in interest.most_common()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=parse_size, default=GIB)
    parser.add_argument("--chunk", type=parse_size, default=0)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--modeldrop-dir", type=Path, default=REPO)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--native", action="store_true")
    args = parser.parse_args()
    label = f"{'nofsync' if args.no_fsync else 'fsync'}-{'one' if not args.chunk else args.chunk // MIB}"
    source = make_source(SCRATCH / f"source-{args.size}.gguf", args.size / GIB)
    warm(Path(source["path"]))
    server = make_servers(["modeldrop-nofsync" if args.no_fsync else "modeldrop"], args.modeldrop_dir.resolve())[0]
    server.start()
    out = SCRATCH / f"profile-{label}.txt"
    spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(server.pid), "--nonblocking", "--threads", "--idle",
                            "--rate", str(args.rate), "--format", "raw", "--output", str(out),
                            *(["--native"] if args.native else [])], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        result = run_client({"mode": "upload", "port": server.port, "base": server.base, "source": source["path"],
                             "length": source["length"], "chunk": args.chunk, "filename": "bench.gguf",
                             "poll_status": True})
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    finally:
        if spy.poll() is None:
            spy.kill()
        server.stop()
        server.clean()
    print(f"{label}: {source['length'] / 1e6 / (result['t_end'] - result['t_start']):.0f} MB/s under py-spy")
    print(summarize(out))


if __name__ == "__main__":
    main()
