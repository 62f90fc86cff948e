"""The servers under test, each started fresh on a free port with an empty data folder.

modeldrop runs from the repository (or a copy, for experiments); the peers run from bench/scratch,
installed there by `ensure_peers()`: tuspyserver in its own venv under uvicorn (uvloop + httptools),
@tus/server + @tus/file-store under node 20. Two references run bench/stack_app.py, modeldrop's stack
minus everything tus: uvicorn-store (stores the body) and uvicorn-store-sha256 (and hashes it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SCRATCH = BENCH / "scratch"
PYTHON = REPO / ".venv" / "bin" / "python"
PEER_PY = SCRATCH / "pyenv" / "bin" / "python"
NODE_DIR = SCRATCH / "node"
TUSPY_DIR = SCRATCH / "tuspy"
PEER_VERSIONS = {"tuspyserver": "4.4.3", "@tus/server": "2.4.5", "@tus/file-store": "2.1.1"}

TUSPY_APP = '''import os
from fastapi import FastAPI
from tuspyserver import create_tus_router

app = FastAPI()
app.include_router(create_tus_router(prefix="files", files_dir=os.environ["FILES_DIR"], max_size=1 << 40))
'''

NODE_APP = '''import http from "node:http";
import {Server} from "@tus/server";
import {FileStore} from "@tus/file-store";

const tus = new Server({path: "/files", datastore: new FileStore({directory: process.env.FILES_DIR})});
http.createServer((req, res) => tus.handle(req, res)).listen(Number(process.env.PORT), "127.0.0.1");
'''


def ensure_peers() -> None:
    """Installs the peers into scratch once; later runs only rewrite the two small app files."""
    SCRATCH.mkdir(exist_ok=True)
    if not PEER_PY.exists():
        subprocess.run([str(PYTHON), "-m", "venv", str(SCRATCH / "pyenv")], check=True)
    if subprocess.run([str(PEER_PY), "-c", "import tuspyserver, uvloop, httptools, fastapi"],
                      capture_output=True).returncode != 0:
        subprocess.run([str(PEER_PY), "-m", "pip", "install", "-q", f"tuspyserver=={PEER_VERSIONS['tuspyserver']}",
                        "uvicorn", "uvloop", "httptools"], check=True)
    NODE_DIR.mkdir(exist_ok=True)
    if not (NODE_DIR / "node_modules" / "@tus" / "file-store").exists():
        (NODE_DIR / "package.json").write_text('{"name": "bench-peers", "private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund",
                        *(f"{name}@{PEER_VERSIONS[name]}" for name in ("@tus/server", "@tus/file-store"))],
                       cwd=NODE_DIR, check=True)
    TUSPY_DIR.mkdir(exist_ok=True)
    (TUSPY_DIR / "app.py").write_text(TUSPY_APP)
    (NODE_DIR / "server.mjs").write_text(NODE_APP)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def import_path(code_dir: Path) -> str:
    """A PYTHONPATH under which `modeldrop.*` is the code in code_dir (a copy of the repository).

    The repository itself is installed (editable); another copy is reached through a folder named as
    installed, whose entries link to that copy's server/, worker/ and cli/: the path comes before the
    editable install's finder, so its modules win.
    """
    if code_dir.resolve() == REPO.resolve():
        return str(REPO)
    view = SCRATCH / "views" / hashlib.sha256(str(code_dir.resolve()).encode()).hexdigest()[:12]
    for folder in ("server", "worker", "cli"):
        link = view / "modeldrop" / folder
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(code_dir.resolve() / folder)
    return str(view)


@dataclasses.dataclass
class Server:
    name: str
    kind: str          # modeldrop | tuspy | node | stack (bench/stack_app.py)
    fsync: bool = False  # modeldrop: --fsync; stack: hash what it stores
    code_dir: Path = REPO
    extra_args: tuple[str, ...] = ()
    port: int = 0
    data_dir: Path = SCRATCH / "data"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return "/files" if self.kind == "node" else "/files/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        self.data_dir = SCRATCH / "data" / f"{self.name}-{self.port}"
        files = self.data_dir / "files"
        files.mkdir(parents=True)
        env = {**os.environ, "FILES_DIR": str(files), "PORT": str(self.port)}
        if self.kind == "modeldrop":
            argv = [str(PYTHON), "-m", "modeldrop.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                    "--data-dir", str(self.data_dir), "--log-level", "warning",
                    "--fsync" if self.fsync else "--no-fsync", *self.extra_args]
            cwd = self.code_dir
            env["PYTHONPATH"] = import_path(self.code_dir)
        elif self.kind == "stack":
            argv = [str(PYTHON), "-m", "uvicorn", "bench.stack_app:app", "--host", "127.0.0.1", "--port",
                    str(self.port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                    "--no-access-log"]
            cwd = REPO
            env.update(PYTHONPATH=str(REPO), SHA256="1" if self.fsync else "0")
        elif self.kind == "tuspy":
            argv = [str(PEER_PY), "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(self.port),
                    "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
            cwd = TUSPY_DIR
        else:
            argv = ["node", "server.mjs"]
            cwd = NODE_DIR
        log = open(self.data_dir / "server.log", "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {(self.data_dir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("OPTIONS", self.base, headers={"Tus-Resumable": "1.0.0"})
            return conn.getresponse().status < 500
        except OSError:
            return False

    def stored_path(self, upload_path: str, filename: str) -> Path:
        if self.kind == "modeldrop":
            return self.data_dir / "models" / filename
        return self.data_dir / "files" / upload_path.rstrip("/").rsplit("/", 1)[-1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def clean(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        os.sync()  # nobody starts with another's dirty pages still being written back


def make_servers(names: list[str], code_dir: Path, extra_args: tuple[str, ...] = (),
                 variants: dict[str, Path] | None = None) -> list[Server]:
    """`modeldrop@NAME` and `modeldrop-nofsync@NAME` run the copy of the code in variants[NAME]."""
    servers = []
    for name in names:
        base, _, variant = name.partition("@")
        server = _known(base, (variants or {})[variant] if variant else code_dir, extra_args)
        server.name = name
        servers.append(server)
    return servers


def _known(name: str, code_dir: Path, extra_args: tuple[str, ...]) -> Server:
    known = {
        "modeldrop": lambda: Server("modeldrop", "modeldrop", True, code_dir, extra_args),
        "modeldrop-nofsync": lambda: Server("modeldrop-nofsync", "modeldrop", False, code_dir, extra_args),
        # fsync on, bodies spliced through the page cache as before O_DIRECT (store/direct.py): the A/B of that path
        "modeldrop-splice": lambda: Server("modeldrop-splice", "modeldrop", True, code_dir,
                                           (*extra_args, "--no-direct-io")),
        "tuspyserver": lambda: Server("tuspyserver", "tuspy"),
        "tus-node": lambda: Server("tus-node", "node"),
        "uvicorn-store": lambda: Server("uvicorn-store", "stack"),
        "uvicorn-store-sha256": lambda: Server("uvicorn-store-sha256", "stack", True),
    }
    return known[name]()
