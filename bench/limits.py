"""What the machine allows an upload that must arrive, be hashed and be durable, measured in the same run.

Each limit is one of the three things every byte of a verified, durable upload goes through, measured
alone at its best:

- disk: `dd oflag=direct` (4 MiB blocks, then fsync): the source written past the page cache, straight to
  the device. A buffered `dd conv=fsync` is not the disk's limit on these virtual machines: writing into
  fresh page-cache pages is slowed by first-touch memory faults (352 MB/s into new pages, 1.4 GB/s right
  after into freed ones, and with O_DIRECT).
- hash: sha256 (OpenSSL, via hashlib) on one core, of 256 MiB already in memory, as many times as the
  upload is long.
- network: loopback TCP from a `sendfile` sender into `recv_into` of a 1 MiB buffer, nothing stored.

Their minimum is "the machine's limit". But each is measured alone, with the machine to itself, and an
upload does the receiving and the hashing at once, with the sender on the same two cores: so one more row,
the CPU limit, receives over loopback TCP and hashes in a second thread, storing nothing. Where it is below
the minimum of the three, the cores, not the disk, the hash or the network, bound every upload on this
machine. Two references combine the rest as a server would, kept from earlier runs: loopback TCP into a
file (buffered writes), and the same with a second thread hashing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.servers import PYTHON, REPO, SCRATCH, free_port
from bench.source import sha256_file, warm

DIRECT = "disk, O_DIRECT (dd oflag=direct bs=4M, fsync)"
SHA256 = "sha256, one core (OpenSSL, in memory)"
TCP = "loopback TCP → recv_into (sendfile sender)"
MACHINE = "machine limit (min of the three)"
TCP_SHA256 = "CPU limit: loopback TCP → recv_into + sha256 in a second thread, nothing stored"
TCP_FILE = "loopback TCP → file"
TCP_FILE_SHA256 = "loopback TCP → file + sha256"
PRIMARY = (DIRECT, SHA256, TCP)
HASH_BUFFER = 256 * 1024 * 1024


def direct_write(source: dict[str, Any]) -> float:
    """The source (page-cached) written with O_DIRECT and fsynced; dd writes the last short block buffered."""
    out = SCRATCH / "direct.out"
    argv = ["dd", f"if={source['path']}", f"of={out}", "bs=4M", "oflag=direct", "conv=fsync", "status=none"]
    started = time.monotonic()
    subprocess.run(argv, check=True, timeout=600)
    elapsed = time.monotonic() - started
    ok = out.stat().st_size == source["length"]
    out.unlink()
    os.sync()
    if not ok:
        raise RuntimeError("dd oflag=direct wrote a different length")
    return source["length"] / 1e6 / elapsed


def sha256_one_core(source: dict[str, Any]) -> float:
    """hashlib.sha256 over `length` bytes from a 256 MiB buffer read from the source beforehand (in 1 MiB
    updates, as a streaming hasher does); larger than any cache, so memory is read as a server's would be."""
    size = min(HASH_BUFFER, source["length"])
    with open(source["path"], "rb", buffering=0) as file:
        buffer = bytearray(size)
        view, done = memoryview(buffer), 0
        while done < size:
            count = file.readinto(view[done:])
            if not count:
                raise RuntimeError(f"{source['path']} is shorter than its recorded length")
            done += count
    step = 1024 * 1024
    hasher = hashlib.sha256()
    started = time.monotonic()
    remaining = source["length"]
    while remaining > 0:
        for start in range(0, min(size, remaining), step):
            hasher.update(view[start:start + min(step, remaining - start)])
        remaining -= min(size, remaining)
    elapsed = time.monotonic() - started
    hasher.hexdigest()
    return source["length"] / 1e6 / elapsed


def tcp_receive(source: dict[str, Any], output: Path | None = None, sha256: bool = False) -> float:
    """The neutral client's raw mode (`sendfile`) into bench/receiver.py: into recv_into only (output None),
    or written to a file (and hashed by a second thread); stored bytes and the digest are checked."""
    from bench.run import run_client  # bench.run imports this module

    port = free_port()
    receiver = subprocess.Popen([str(PYTHON), "-m", "bench.receiver", str(port), str(output or "-"),
                                 str(source["length"]), *(["--sha256"] if sha256 else [])], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        result = run_client({"mode": "raw", "port": port, "source": source["path"], "length": source["length"]})
        tail = receiver.stdout.read().split()
        receiver.wait(30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
    if output is None:
        ok = tail[:1] == [str(source["length"])] and (not sha256 or tail[1:] == [source["sha256"]])
    else:
        ok = output.exists() and sha256_file(output, drop_cache=True) == source["sha256"]
        ok = ok and (not sha256 or tail[-1:] == [source["sha256"]])
        output.unlink(missing_ok=True)
        os.sync()
    if not ok:
        raise RuntimeError(f"the loopback receiver got different bytes ({tail})")
    return source["length"] / 1e6 / (result["t_end"] - result["t_start"])


def measure(source: dict[str, Any], record: Any) -> None:
    """One repetition of every limit, each recorded as it is measured, then their minimum."""
    warm(Path(source["path"]))  # every limit reads the source from the page cache, as every upload does
    primary = {DIRECT: direct_write(source)}
    record("limits", DIRECT, {"mbps": primary[DIRECT]})
    primary[SHA256] = sha256_one_core(source)
    record("limits", SHA256, {"mbps": primary[SHA256]})
    primary[TCP] = tcp_receive(source)
    record("limits", TCP, {"mbps": primary[TCP]})
    slowest = min(primary, key=lambda name: primary[name])
    record("limits", MACHINE, {"mbps": primary[slowest], "which": slowest})
    record("limits", TCP_SHA256, {"mbps": tcp_receive(source, sha256=True)})
    record("limits", TCP_FILE, {"mbps": tcp_receive(source, SCRATCH / "tcp.out")})
    record("limits", TCP_FILE_SHA256, {"mbps": tcp_receive(source, SCRATCH / "tcp.out", sha256=True)})
