"""A link planted in staging for an upload's data file: a PATCH writes nothing through it (real server)."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import ServerProcess
from tests.support.tus import TusClient, data_path, gguf_bytes, settle


def test_patch_does_not_write_through_a_data_file_planted_as_a_link(server: ServerProcess, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    client = TusClient(server.url)
    model = gguf_bytes() + bytes(2 * 1024 * 1024)  # large enough for the splice path
    location = client.location(len(model))
    data = data_path(server, location)
    data.unlink()
    data.symlink_to(outside)
    settle()  # the record cache hears of the change
    # a tus client resumes where HEAD says: the link's target must neither count as the upload's bytes nor grow
    head = client.head(location)
    offset = int(head.headers["Upload-Offset"]) if head.status_code == 200 else 0
    for body in (model[:100], model):  # read through ASGI, and spliced off the socket
        response = client.patch(location, body, offset)
        assert outside.read_bytes() == b"precious", f"PATCH answered {response.status_code} and wrote outside"
        assert 400 <= response.status_code < 600 and response.status_code != 409, response.text
        assert "link" in response.json()["message"]
    assert offset == 0, "the link's target was counted as the upload's bytes"
