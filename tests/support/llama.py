"""A real llama.cpp `llama-server` in router mode for tests, from the build scripts/build-llama-server.sh caches.

    binary = llama_server_binary()            # None: not built here (the tests that need it skip)
    llama = LlamaServer(binary, models_dir, log_path).start()
    llama.states()                            # {"tiny": "unloaded", ...} straight from its GET /models

The script caches portable builds in ${MODELDROP_CACHE:-~/.cache/modeldrop}/llama-server/<version>-portable/;
they are preferred over an older native build (`<version>/`), whose AMX kernels crash on the first inference
on some CPUs.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any

from tests.support.processes import Process, free_port, wait_for

BUILD_HINT = ("no llama-server binary: run scripts/build-llama-server.sh (about 10 minutes on 2 cores) to build "
              "one into ~/.cache/modeldrop/llama-server/<version>-portable/")


def llama_server_binary() -> Path | None:
    cache = Path(os.environ.get("MODELDROP_CACHE") or Path.home() / ".cache" / "modeldrop") / "llama-server"
    found = [path for path in cache.glob("*/llama-server") if os.access(path, os.X_OK)]
    found.sort(key=lambda path: (path.parent.name.endswith("-portable"), path.parent.name))
    return found[-1] if found else None


class LlamaServer(Process):
    name = "llama-server"

    def __init__(self, binary: Path, models_dir: Path, log_path: Path, *extra: str) -> None:
        super().__init__(log_path)
        self.binary, self.models_dir, self.port, self.extra = binary, models_dir, free_port(), list(extra)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._spawn([str(self.binary), "--models-dir", str(self.models_dir), "--host", "127.0.0.1",
                     "--port", str(self.port), *self.extra])
        wait_for(lambda: self.model_ids() is not None, 60, f"llama-server on port {self.port}\n{self.log()[-2000:]}",
                 interval=0.2)
        return self

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body)
            connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        return response.status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw

    def listing(self) -> list[dict[str, Any]] | None:
        assert self.alive(), self.log()[-2000:]
        try:
            status, body = self.request("GET", "/models", timeout=2)
        except (OSError, ValueError):
            return None
        return list(body.get("data", [])) if status == 200 and isinstance(body, dict) else None

    def model_ids(self) -> set[str] | None:
        listing = self.listing()
        return None if listing is None else {str(entry["id"]) for entry in listing}

    def states(self) -> dict[str, str]:
        """id -> status value as llama-server itself reports it ("failed" when its load failed)."""
        states = {}
        for entry in self.listing() or []:
            status = entry.get("status") or {}
            states[str(entry["id"])] = "failed" if status.get("failed") else str(status.get("value"))
        return states
