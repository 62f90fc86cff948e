"""--expire-after for what waits on other uploads: concatenation partials nobody used, split shards whose
set never completed. Each must leave staging on its own, with a reason for the uploads that were staged."""

from __future__ import annotations

import os
from pathlib import Path

from tests.ggufgen import write_split_set
from tests.support.processes import ServerProcess, wait_for
from tests.support.tus import client  # noqa: F401  (fixture)
from tests.support.tus import TusClient, data_path, gguf_bytes, module_server, stored_files, upload_id

EXPIRE_AFTER = 3
server = module_server(fsync=False, expire_after=EXPIRE_AFTER, maintenance_interval=0.5)
MODEL = gguf_bytes()


def test_expiry_complete_partial_nobody_used_is_removed(client: TusClient, server: ServerProcess) -> None:
    location = client.location(len(MODEL), metadata={}, headers={"Upload-Concat": "partial"})
    assert client.patch(location, MODEL, 0).status_code == 204
    assert "Upload-Expires" in client.head(location).headers  # complete, yet it expires unless a final uses it
    wait_for(lambda: client.head(location).status_code == 410, EXPIRE_AFTER + 10, "the unused partial to expire")
    assert not data_path(server, location).exists()
    assert not [name for name in stored_files(server) if name.startswith(upload_id(location)) and
                not name.endswith(".gone")]


def test_expiry_staged_shards_of_an_incomplete_set_fail_and_are_freed(client: TusClient, server: ServerProcess,
                                                                         tmp_path: Path) -> None:
    shards = write_split_set(tmp_path, "lonely", 2)
    location = client.upload(shards[0].read_bytes(), metadata={"filename": shards[0].name})
    staged = wait_for(lambda: (lambda s: s if s.get("set") else None)(client.status(location)), 10,
                      "the shard to be staged in its set")
    assert staged["state"] == "verifying"
    failed = client.wait_state(location, "failed", timeout=EXPIRE_AFTER + 10)
    assert "00002" in failed["reason"] and "expired" in failed["reason"]
    # the members file goes last, just after the statuses are written
    wait_for(lambda: os.listdir(server.staging_dir / "sets") == [], 5, "the expired set to be cleaned up")
    assert not (server.models_dir / "lonely").exists()
