"""keep_freed_heap: an upload's bytes are not page-faulted in afresh batch after batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.ggufgen import write_model
from tests.support.processes import REPO, ServerProcess
from tests.support.tus import TusClient

PAGE = 4096
BODY_CHUNK = 256 * 1024  # about what one socket read hands the app
BATCHES = 64

FREE_AND_REFILL = f"""
import os, resource, sys
from modeldrop.server.libc import keep_freed_heap
if sys.argv[1] == "kept":
    assert keep_freed_heap()
def batch():  # like a request body: a batch of chunks, all freed together once written
    return sum(map(len, [os.urandom(16) * {BODY_CHUNK // 16} for _ in range(16)]))
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({BATCHES}):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FREE_AND_REFILL, mode], cwd=REPO, capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_libc_keep_freed_heap_stops_refaulting_freed_batches() -> None:
    pages = BATCHES * 16 * BODY_CHUNK // PAGE
    assert faults("kept") < pages // 20


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as file:
        return int(file.read().rsplit(")", 1)[1].split()[7])


def test_libc_server_receives_a_body_without_faulting_it_in(server: ServerProcess, tmp_path: Path) -> None:
    model = write_model(tmp_path / "big.gguf", tensors=4, tensor_elems=8 * 1024 * 1024).read_bytes()  # 128 MiB
    client = TusClient(server.url)
    location = client.location(len(model), metadata={"filename": "big.gguf"})
    before = minor_faults(server.pid)
    assert client.patch(location, model, 0).status_code == 204
    # without keep_freed_heap most pages of the body were faulted in fresh (about 24,000 of the 32,768
    # here); what is left with it is the server's own bookkeeping
    assert minor_faults(server.pid) - before < len(model) // PAGE // 8
