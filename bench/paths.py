"""Upload paths as people take them, each timed from starting the client until the file is where it belongs.

- `sendfile client → S`: the neutral client (bench/client.py: one POST, one PATCH sent with `sendfile`,
  then the status polled every 5 ms until installed), a process started for it: the yardstick the CLI is
  held to, measured over the same span.
- `modeldrop upload → S`: the CLI as a user runs it (`-q`, a fresh state file), process start to exit;
  it exits once the server reports the file installed.
- `rsync --partial over SSH`: what people use instead, to a folder on this machine through an sshd the
  bench starts on a free loopback port (throwaway host and client keys, key auth); process start to exit.
  rsync neither hashes on the receiving side as a check against a digest nor syncs to disk.
- `Uppy in Chromium → S`: the web page (web/dist) in headless Chromium via Playwright, one request as the
  page sends it; from the click on Upload to the card showing installed (also: to the PATCH's answer).
- `Chromium, one XHR → a sink` and `…, N concurrent XHRs → a sink`: Chromium alone, the file PUT whole or cut
  into N slices PUT at once, to bench/browser_sink.py (counts the bytes, stores nothing): whether Chromium's
  upload speed is a limit per request or per browser. Client CPU-s there: all of Chromium's processes.

Every installed or received file is checked against the source's sha256.
"""

from __future__ import annotations

import getpass
import json
import os
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import proc
from bench.servers import PYTHON, REPO, SCRATCH, Server, free_port, import_path
from bench.source import sha256_file, warm

SENDFILE_CLIENT = "sendfile client"
CLI = "modeldrop upload"
RSYNC = "rsync --partial over SSH"
BROWSER = "Uppy in Chromium"
BROWSER_CEILING = "Chromium, one XHR → a sink"
BROWSER_CEILING_CONCURRENT = "Chromium, N concurrent XHRs → a sink"
CEILING_REQUESTS = (2, 4, 8)  # slices of the file, one XHR each, all at once
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
WEB_DIST = REPO / "web" / "dist"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _identical(path: Path, expected: str) -> bool:
    return path.exists() and sha256_file(path, drop_cache=True) == expected


def measure_client(server: Server, source: dict[str, Any], client: str, cli_dir: Path | None = None) -> dict[str, Any]:
    """One upload of the source by `client` (SENDFILE_CLIENT or CLI) to a fresh `server`, to installed; the CLI
    runs from `cli_dir` (another checkout, for a before/after) or else from the server's code."""
    name = Path(source["path"]).name
    warm(Path(source["path"]))
    server.start()
    state_file = SCRATCH / "cli-state.json"
    state_file.unlink(missing_ok=True)
    try:
        time.sleep(0.3)
        cpu_before, children_before = proc.cpu_seconds(server.pid), _children_cpu()
        extra: dict[str, Any] = {}
        if client == SENDFILE_CLIENT:
            job = {"mode": "upload", "port": server.port, "base": server.base, "source": source["path"],
                   "length": source["length"], "chunk": 0, "filename": name, "poll_status": True}
            started = time.monotonic()
            out = subprocess.run([str(PYTHON), "-m", "bench.client", json.dumps(job)], cwd=REPO, capture_output=True,
                                 text=True, timeout=900)
            ended = time.monotonic()
            if out.returncode != 0:
                raise RuntimeError(f"the sendfile client failed: {out.stderr[-2000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if result.get("state") != "installed":
                raise RuntimeError(f"the sendfile client's upload ended {result.get('state')}: {result.get('reason')}")
            extra["patch_mbps"] = source["length"] / 1e6 / (result["t_end"] - result["t_start"])
        else:
            argv = [str(PYTHON), "-m", "modeldrop.cli.main", "upload", source["path"], "--server",
                    f"http://127.0.0.1:{server.port}", "--state-file", str(state_file)]
            code = cli_dir or server.code_dir
            env = {**os.environ, "PYTHONPATH": import_path(code)}
            started = time.monotonic()
            out = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True, timeout=900)
            ended = time.monotonic()
            if out.returncode != 0 or not out.stdout.startswith(f"installed {name}"):
                raise RuntimeError(f"modeldrop upload failed ({out.returncode}): {out.stdout} {out.stderr[-2000:]}")
        client_cpu = _children_cpu() - children_before
        server_cpu = proc.cpu_seconds(server.pid) - cpu_before
        ok = _identical(server.stored_path("", name), source["sha256"])
    finally:
        server.stop()
        server.clean()
        state_file.unlink(missing_ok=True)
    return {"mbps": source["length"] / 1e6 / (ended - started), "seconds": ended - started,
            "client_cpu_s": client_cpu, "server_cpu_s": server_cpu, "identical": ok, **extra}


# -- rsync over SSH ---------------------------------------------------------------------------------------

SSH_DIR = SCRATCH / "ssh"
SSHD = Path("/usr/sbin/sshd")


def ensure_rsync() -> str | None:
    """None when rsync and sshd are here (installed through apt as root when missing), else why not."""
    if shutil.which("rsync") and SSHD.exists() and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return ("rsync and/or sshd are missing and this is not root with apt-get: "
                "apt-get install openssh-server openssh-client rsync")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server", "openssh-client",
               "rsync"]
    print("bench: installing openssh-server and rsync (apt-get) for the rsync comparison", flush=True)
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            return f"apt-get could not install openssh-server and rsync: {out.stderr.strip()[-300:]}"
    if not (shutil.which("rsync") and SSHD.exists()):
        return "openssh-server and rsync were installed but rsync or /usr/sbin/sshd is still missing"
    return None


class Sshd:
    """sshd on 127.0.0.1:<free port> with a throwaway host key, accepting one throwaway client key."""

    def __init__(self) -> None:
        self.port = free_port()
        self.user = getpass.getuser()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        shutil.rmtree(SSH_DIR, ignore_errors=True)
        SSH_DIR.mkdir(parents=True)
        for key in ("host_ed25519", "client_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(SSH_DIR / key)], check=True)
        shutil.copy(SSH_DIR / "client_ed25519.pub", SSH_DIR / "authorized_keys")
        (SSH_DIR / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {SSH_DIR / 'host_ed25519'}\n"
            f"PidFile {SSH_DIR / 'sshd.pid'}\nAuthorizedKeysFile {SSH_DIR / 'authorized_keys'}\n"
            f"AllowUsers {self.user}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\nX11Forwarding no\n")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
        log = open(SSH_DIR / "sshd.log", "wb")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(SSH_DIR / "sshd_config")], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"sshd did not start: {(SSH_DIR / 'sshd.log').read_text()[-1000:]}") from None
                time.sleep(0.05)

    @property
    def ssh_command(self) -> str:
        return (f"ssh -p {self.port} -i {SSH_DIR / 'client_ed25519'} -o BatchMode=yes -o StrictHostKeyChecking=no "
                "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def measure_rsync(sshd: Sshd, source: dict[str, Any]) -> dict[str, Any]:
    """`rsync --partial -e ssh FILE user@127.0.0.1:DIR/` into an empty folder: a new file, so all of it is sent."""
    warm(Path(source["path"]))
    dest = SCRATCH / "data" / f"rsync-{sshd.port}"
    dest.mkdir(parents=True)
    try:
        children_before = _children_cpu()
        argv = ["rsync", "--partial", "-e", sshd.ssh_command, source["path"], f"{sshd.user}@127.0.0.1:{dest}/"]
        started = time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        ended = time.monotonic()
        if out.returncode != 0:
            raise RuntimeError(f"rsync failed ({out.returncode}): {out.stderr[-2000:]}")
        client_cpu = _children_cpu() - children_before
        ok = _identical(dest / Path(source["path"]).name, source["sha256"])
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        os.sync()
    return {"mbps": source["length"] / 1e6 / (ended - started), "seconds": ended - started,
            "client_cpu_s": client_cpu, "identical": ok}


# -- the web page -----------------------------------------------------------------------------------------


def browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    if not (WEB_DIST / "index.html").exists():
        return f"{WEB_DIST}/index.html is not built (bash scripts/setup.sh deps, or cd web && npm ci && npm run build)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed in .venv (bash scripts/setup.sh test installs it)"
    return None


def measure_browser(server: Server, source: dict[str, Any]) -> dict[str, Any]:
    """The page served by `server` (started with --web-dir web/dist) uploads the source in one request."""
    from playwright.sync_api import sync_playwright

    name = Path(source["path"]).name
    warm(Path(source["path"]))
    server.start()
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(900_000)
        patches: list[float] = []
        page.on("requestfinished", lambda request: patches.append(time.monotonic())
                if request.method == "PATCH" else None)
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_selector("[data-testid=dropzone] .uppy-Dashboard")
        page.get_by_test_id("file-input").set_input_files([source["path"]])
        card = page.get_by_test_id(f"upload-status-{name}")
        card.wait_for()
        time.sleep(0.3)
        cpu_before = proc.cpu_seconds(server.pid)
        started = time.monotonic()
        page.get_by_test_id("start-upload").click()
        page.wait_for_selector(f"[data-testid='upload-status-{name}'][data-state=installed], "
                               f"[data-testid='upload-status-{name}'][data-state=failed]", timeout=900_000)
        ended = time.monotonic()
        state = card.get_attribute("data-state")
        server_cpu = proc.cpu_seconds(server.pid) - cpu_before
        if state != "installed":
            raise RuntimeError(f"the page's upload ended {state}: {card.inner_text()}")
        browser.close()
        ok = _identical(server.stored_path("", name), source["sha256"])
    finally:
        playwright.stop()
        server.stop()
        server.clean()
    result = {"mbps": source["length"] / 1e6 / (ended - started), "seconds": ended - started,
              "server_cpu_s": server_cpu, "patches": len(patches), "identical": ok}
    if patches:
        result["patch_mbps"] = source["length"] / 1e6 / (patches[-1] - started)
    return result


def _chromium_cpu() -> float:
    """CPU-s of the Chromium processes under this one: the browser's blob reading and network service, which
    RUSAGE_CHILDREN misses (they are Playwright's children, still running)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as file:
                parents[int(entry)] = int(file.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    total = 0.0
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        if ancestor:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    if b"chromium" in file.read():
                        total += proc.cpu_seconds(pid)
            except OSError:
                continue
    return total


def measure_browser_ceilings(source: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Chromium alone: the same file PUT to bench/browser_sink.py, which only counts the bytes, in one XHR
    (BROWSER_CEILING) and cut into N slices sent as N concurrent XHRs, for each N in CEILING_REQUESTS in one
    browser; the fastest N is BROWSER_CEILING_CONCURRENT, every N's figure in its `mbps_by_requests`."""
    from playwright.sync_api import sync_playwright

    warm(Path(source["path"]))
    port = free_port()
    sink = subprocess.Popen([str(PYTHON), "-m", "bench.browser_sink", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    playwright = sync_playwright().start()
    runs: dict[int, dict[str, Any]] = {}
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(900_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#file").set_input_files([source["path"]])
        for requests in (1, *CEILING_REQUESTS):
            time.sleep(0.3)
            client_before, sink_before = _chromium_cpu(), proc.cpu_seconds(sink.pid)
            started = time.monotonic()
            received = page.evaluate("n => sendFile(n)", requests)
            ended = time.monotonic()
            if received != source["length"]:
                raise RuntimeError(f"the sink received {received} bytes of {source['length']} in {requests} requests")
            runs[requests] = {"mbps": source["length"] / 1e6 / (ended - started), "seconds": ended - started,
                              "client_cpu_s": _chromium_cpu() - client_before,
                              "server_cpu_s": proc.cpu_seconds(sink.pid) - sink_before}
        browser.close()
    finally:
        playwright.stop()
        sink.kill()
        sink.wait(10)
    best = max(CEILING_REQUESTS, key=lambda n: runs[n]["mbps"])
    return {BROWSER_CEILING: runs[1], BROWSER_CEILING_CONCURRENT: {
        **runs[best], "requests": best, "mbps_by_requests": {str(n): runs[n]["mbps"] for n in CEILING_REQUESTS}}}
