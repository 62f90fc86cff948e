"""docker-compose.yml, docker/Dockerfile, .dockerignore and .env.example, checked without a Docker engine.

- The compose file is parsed (PyYAML, with ${VAR} interpolation done as compose does) and, where a compose
  CLI is installed, resolved by it (`config` needs no engine).
- The Dockerfile is parsed into stages; every path it copies must exist and not be excluded by
  .dockerignore, and the runtime stage's files are laid out in a temp dir exactly as COPY would and run:
  start.sh -> the real `modeldrop serve`, the web UI served from /app/web/dist, the HEALTHCHECK script.
- docker/healthcheck.py runs against a real server and a real RQ worker on a real redis-server.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.support import REPO, SYSTEM_PATH, Installed, clean_env
from tests.ggufgen import write_model, write_split_set
from tests.support.llama import llama_server_binary
from tests.support.processes import Process, RedisProcess, WorkerProcess, free_port, wait_for

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
SERVICES = {"redis", "server", "worker", "llama-server"}


# ---------------------------------------------------------------- compose file

def interpolate(text: str, env: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default} and ${VAR:?message}, as docker compose resolves them."""
    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name, "")
        if op == ":-":
            return value or arg
        if op == ":?" and not value:
            raise ValueError(arg)
        return value
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", replace, text)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), {"MODELDROP_TOKENS": "t0k3n", **(env or {})}))


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    """Both compose volume syntaxes: "src:dst[:ro]" and {source, target, read_only}."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found.append(Mount(source, target, "ro" in mode))
        else:
            found.append(Mount(volume["source"], volume["target"], bool(volume.get("read_only"))))
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_services_and_common_policies(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        assert service.get("init") is True, f"{name}: init: true reaps children and forwards signals"
        assert service.get("restart") == "unless-stopped", name
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name} needs a healthcheck"


def test_server_and_worker_share_one_data_mount_holding_models_and_staging(compose: dict[str, Any]) -> None:
    image_env = dockerfile().final.env
    data_mounts = []
    for name in ("server", "worker"):
        service = compose["services"][name]
        env = {**image_env, **environment(service)}
        models, staging = PurePosixPath(env["MODELDROP_MODELS_DIR"]), PurePosixPath(env["MODELDROP_STAGING_DIR"])
        holding = [m for m in mounts(service) if PurePosixPath(m.target) in models.parents]
        assert len(holding) == 1, f"{name}: models dir {models} must be inside exactly one mount"
        data = holding[0]
        assert not data.read_only
        assert PurePosixPath(data.target) in staging.parents, f"{name}: staging must be on the models mount"
        inner = [m.target for m in mounts(service) if PurePosixPath(data.target) in PurePosixPath(m.target).parents]
        assert not inner, f"{name}: a mount inside {data.target} ({inner}) would split models and staging"
        data_mounts.append((data.source, data.target))
    assert data_mounts[0] == data_mounts[1], "server and worker must see the same files at the same path"


def test_llama_server_reads_the_models_folder_read_only_in_router_mode(compose: dict[str, Any]) -> None:
    llama = compose["services"]["llama-server"]
    server = compose["services"]["server"]
    assert llama["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    command = llama["command"]
    assert not {"-m", "--model", "-hf", "--hf-repo"} & set(command), "router mode has no -m"
    flags = dict(zip(command[::2], command[1::2]))
    assert flags == {"--models-dir": "/models", "--host": "0.0.0.0", "--port": "8080"}

    data = next(m for m in mounts(server) if m.target == "/data")
    models_dir = PurePosixPath(dockerfile().final.env["MODELDROP_MODELS_DIR"])
    [models] = [m for m in mounts(llama) if m.target == "/models"]
    assert models.read_only
    assert PurePosixPath(models.source) == PurePosixPath(data.source) / models_dir.relative_to(data.target)

    assert "/health" in " ".join(llama["healthcheck"]["test"]) and "8080" in " ".join(llama["healthcheck"]["test"])
    assert llama["healthcheck"].get("start_period"), "/health is 503 while a model loads"
    assert [str(port).rsplit(":", 2)[-2] for port in llama["ports"]] != ["8080"], "8080 is the server's"


def test_server_settings_point_at_the_other_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    server = services["server"]
    raw = yaml.safe_load(COMPOSE.read_text())["services"]["server"]
    assert environment(raw)["MODELDROP_TOKENS"].startswith("${MODELDROP_TOKENS:?"), "token from .env, required"
    assert environment(server)["MODELDROP_TOKENS"] == "t0k3n"
    assert "8080:8080" in [str(port) for port in server["ports"]]
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
    assert server["command"] == ["serve"]
    for name in ("server", "worker"):
        env = environment(services[name])
        redis = urlparse(env["REDIS_URL"])
        assert (redis.scheme, redis.hostname, redis.port or 6379) == ("redis", "redis", 6379)
        llama = urlparse(env["MODELDROP_LLAMA_SERVER_URL"])
        assert llama.hostname == "llama-server" and llama.port == 8080
    assert server["build"]["context"] == "."
    assert (REPO / server["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_worker_is_the_same_image_and_scalable(compose: dict[str, Any]) -> None:
    server, worker = compose["services"]["server"], compose["services"]["worker"]
    assert worker["image"] == server["image"]
    assert worker["command"] == ["worker"]
    assert "ports" not in worker and "container_name" not in worker, "--scale worker=N needs neither"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_persists_to_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    [data] = [m for m in mounts(redis) if m.target == "/data"]
    assert data.source in compose["volumes"], "a named volume"
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_required_token_fails_with_the_message() -> None:
    with pytest.raises(ValueError, match="set MODELDROP_TOKENS in .env"):
        interpolate(COMPOSE.read_text(), {})


def test_env_example_documents_every_variable_the_compose_file_reads() -> None:
    example = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert {"MODELDROP_TOKENS", "MODELDROP_DATA", "UID", "GID"} <= used
    assert used <= set(example), f"undocumented: {used - set(example)}"
    assert example["MODELDROP_TOKENS"] == "", "no token may ship as a default"
    assert example["UID"].isdigit() and example["GID"].isdigit()


def compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run_compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI here (docker compose or docker-compose)")
    env_file = tmp_path / "empty.env"  # keep an operator's .env out of the test
    env_file.write_text("")
    return subprocess.run([*cli, "--env-file", str(env_file), "-f", str(COMPOSE), "config"], cwd=REPO,
                          env=clean_env(**env), capture_output=True, text=True, timeout=60)


def test_compose_cli_resolves_the_file_with_one_data_folder(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path, MODELDROP_TOKENS="a,b", MODELDROP_DATA="/srv/modeldrop",
                                UID="1234", GID="2345")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == SERVICES
    for name in ("server", "worker"):
        assert [(m.source, m.target, m.read_only) for m in mounts(services[name])] == \
            [("/srv/modeldrop", "/data", False)]
        assert {str(k): str(v) for k, v in services[name]["build"]["args"].items()} == {"UID": "1234", "GID": "2345"}
    assert [(m.source, m.target, m.read_only) for m in mounts(services["llama-server"])] == \
        [("/srv/modeldrop/models", "/models", True)]
    assert environment(services["server"])["MODELDROP_TOKENS"] == "a,b"


def test_compose_cli_refuses_to_run_without_a_token(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path)
    assert result.returncode != 0
    assert "set MODELDROP_TOKENS in .env" in result.stderr


# ---------------------------------------------------------------- Dockerfile

@dataclass
class Copy:
    sources: list[str]
    dest: str
    stage: str | None  # --from=


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [args for word, args in self.instructions if word == keyword]

    @property
    def workdir(self) -> str:
        return self.values("WORKDIR")[-1] if self.values("WORKDIR") else "/"

    @property
    def env(self) -> dict[str, str]:
        env = {}
        for args in self.values("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
        return env

    def copies(self) -> list[tuple[str, Copy]]:
        """(workdir at that point, copy) for each COPY."""
        workdir, found = "/", []
        for word, args in self.instructions:
            if word == "WORKDIR":
                workdir = str(PurePosixPath(workdir) / args)
            elif word == "COPY":
                tokens = json.loads(args) if args.startswith("[") else shlex.split(args)
                flags = {t.split("=", 1)[0]: t.split("=", 1)[-1] for t in tokens if t.startswith("--")}
                paths = [t for t in tokens if not t.startswith("--")]
                found.append((workdir, Copy(paths[:-1], paths[-1], flags.get("--from"))))
        return found

    def image_files(self) -> dict[str, str]:
        """image path -> repo path, for every file the stage copies from the build context."""
        files = {}
        for workdir, copy in self.copies():
            if copy.stage is not None:
                continue
            dest = PurePosixPath(workdir) / copy.dest
            for source in copy.sources:
                path = REPO / source
                if path.is_dir():
                    for file in path.rglob("*"):
                        if file.is_file() and not ignored(file.relative_to(REPO).as_posix()):
                            files[str(dest / file.relative_to(path))] = file.relative_to(REPO).as_posix()
                else:
                    into_dir = copy.dest.endswith("/") or len(copy.sources) > 1
                    files[str(dest / path.name if into_dir else dest)] = source
        return files


@dataclass
class Dockerfile:
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def dockerfile() -> Dockerfile:
    lines, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        word, _, args = line.partition(" ")
        word, args = word.upper(), args.strip()
        if word == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((word, args))
    return Dockerfile(stages)


def ignore_patterns() -> list[str]:
    return [line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """.dockerignore semantics for the patterns used here: a match on the path or any parent excludes it."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in ignore_patterns():
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or (pattern.startswith("**/")
                                                      and fnmatch.fnmatch(candidate.split("/")[-1], pattern[3:])):
                return True
    return False


def test_three_stages_web_build_then_wheel_then_runtime_with_only_the_wheel() -> None:
    parsed = dockerfile()
    web = parsed.stage("web")
    assert web.image == "node:20-slim"
    assert any("npm ci" in run and "npm run build" in run for run in web.values("RUN"))
    [(workdir, copy)] = web.copies()
    assert copy.sources == ["web/"] and PurePosixPath(workdir) / copy.dest == PurePosixPath(web.workdir)

    wheel = parsed.stage("wheel")
    [(workdir, dist)] = [(w, c) for w, c in wheel.copies() if c.stage == "web"]
    assert dist.sources == [f"{web.workdir}/dist"], "the web stage's build output"
    assert PurePosixPath(workdir) / dist.dest == PurePosixPath(wheel.workdir) / "web" / "dist", \
        "where setup.py takes the built UI from"
    assert any("pip wheel" in run and "--no-deps" in run for run in wheel.values("RUN"))

    final = parsed.final
    assert final.image == "python:3.11-slim"
    runs = " ".join(final.values("RUN"))
    assert "from=wheel" in runs and "pip install /wheels/*.whl" in runs
    assert "-e" not in runs.split() and "[test]" not in runs
    sources = [source for _, copy in final.copies() for source in copy.sources]
    assert not {"cli/", "server/", "worker/", "setup.cfg"} & set(sources), "the runtime holds the installed wheel only"


def test_runtime_is_non_root_with_uid_and_gid_build_args() -> None:
    final = dockerfile().final
    args = dict(arg.split("=", 1) for arg in final.values("ARG"))
    assert args.get("UID") == "1000" and args.get("GID") == "1000"
    user = final.values("USER")
    assert user and user[-1] not in ("root", "0", "0:0"), "must not run as root"
    last_user = max(i for i, (word, _) in enumerate(final.instructions) if word == "USER")
    assert all(word != "RUN" for word, _ in final.instructions[last_user:]), "nothing runs as root after USER"
    runs = " ".join(final.values("RUN"))
    assert "useradd" in runs and '--uid "$UID"' in runs and '--gid "$GID"' in runs and user[-1] in runs


def test_env_defaults_entrypoint_cmd_port_and_healthcheck() -> None:
    final = dockerfile().final
    env = final.env
    assert {key: env.get(key) for key in ("MODELDROP_HOST", "MODELDROP_DATA_DIR", "MODELDROP_MODELS_DIR",
                                           "MODELDROP_STAGING_DIR")} == {
        "MODELDROP_HOST": "0.0.0.0", "MODELDROP_DATA_DIR": "/data", "MODELDROP_MODELS_DIR": "/data/models",
        "MODELDROP_STAGING_DIR": "/data/staging"}
    assert final.values("EXPOSE") == ["8080"]
    assert json.loads(final.values("ENTRYPOINT")[-1]) == ["/app/scripts/start.sh"]
    assert json.loads(final.values("CMD")[-1]) == ["serve"]
    [health] = final.values("HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3:].strip())
    assert command == ["python", "/app/docker/healthcheck.py", "serve"]
    assert "urllib" in HEALTHCHECK.read_text() and "/healthz" in HEALTHCHECK.read_text()


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    parsed = dockerfile()
    names = {stage.name for stage in parsed.stages}
    for stage in parsed.stages:
        for _, copy in stage.copies():
            if copy.stage is not None:
                assert copy.stage in names
                continue
            for source in copy.sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    if (REPO / "web" / "package.json").exists():
        assert "build" in json.loads((REPO / "web" / "package.json").read_text())["scripts"]


def test_files_the_image_runs_are_copied_in_and_executable() -> None:
    files = dockerfile().final.image_files()
    compose = load_compose()
    needed = {"/app/scripts/start.sh"} | {
        word for service in ("server", "worker") for word in compose["services"][service]["healthcheck"]["test"]
        if word.startswith("/app/")}
    assert needed <= set(files), f"not copied into the image: {needed - set(files)}"
    assert os.access(REPO / files["/app/scripts/start.sh"], os.X_OK)
    tracked = subprocess.run(["git", "ls-files", "-s", "scripts/start.sh"], cwd=REPO, capture_output=True,
                             text=True).stdout
    if tracked:
        assert tracked.startswith("100755"), "COPY keeps git's mode: start.sh must be committed executable"
    package = dockerfile().stage("wheel").image_files()
    for path in ("cli/main.py", "server/main.py", "worker/main.py", "setup.cfg", "setup.py", "pyproject.toml",
                 "MANIFEST.in", "README.md"):
        assert package.get(f"/src/{path}") == path, f"the wheel stage builds from the repository's files: {path}"


def test_dockerignore_keeps_heavy_and_private_things_out() -> None:
    for path in (".venv/bin/python", "web/node_modules/x", "node_modules/x", "web/dist/index.html",
                 "data/models/a.gguf", ".git/HEAD", "tests/artifacts/x", ".env", "modeldrop.egg-info/PKG-INFO",
                 "server/__pycache__/app.cpython-311.pyc"):
        assert ignored(path), path
    for path in ("server/app.py", "web/src/main.js", "web/package-lock.json", "scripts/start.sh",
                 "docker/healthcheck.py", "setup.cfg", "README.md"):
        assert not ignored(path), path


# ---------------------------------------------------------------- the image's files, run here

def lay_out(stage: Stage, root: Path) -> Path:
    """Copies a stage's context files to root as the Dockerfile's COPYs place them; returns its WORKDIR there."""
    for image_path, repo_path in stage.image_files().items():
        target = root / image_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / repo_path, target)
    return root / stage.workdir.lstrip("/")


def test_the_wheel_stage_builds_the_package_a_clean_checkout_builds(tmp_path: Path, installed: Installed) -> None:
    source = lay_out(dockerfile().stage("wheel"), tmp_path / "image")
    shutil.copytree(installed.checkout / "web" / "dist", source / "web" / "dist")  # what the web stage hands over
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheels"),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "wheels").glob("modeldrop-*.whl")
    assert sorted(zipfile.ZipFile(wheel).namelist()) == sorted(zipfile.ZipFile(installed.wheel).namelist())


def test_the_image_layout_serves_the_ui_and_passes_its_healthcheck(tmp_path: Path, installed: Installed) -> None:
    """start.sh -> the installed wheel's `modeldrop serve`, with the image's environment."""
    app = lay_out(dockerfile().final, tmp_path / "image")
    port = free_port()
    data = tmp_path / "data"
    env = {key: value.replace("/data", str(data)) for key, value in dockerfile().final.env.items()}
    env.update(MODELDROP_HOST="127.0.0.1", MODELDROP_PORT=str(port), MODELDROP_TOKENS="t",
               PATH=f"{installed.full / 'bin'}:{SYSTEM_PATH}")
    health = [sys.executable, str(app / "docker" / "healthcheck.py"), "serve"]

    assert subprocess.run(health, env=clean_env(MODELDROP_PORT=str(port))).returncode == 1, "nothing listens yet"
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen([str(app / "scripts" / "start.sh")], env=clean_env(**env), cwd=tmp_path,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: subprocess.run(health, env=clean_env(MODELDROP_PORT=str(port)),
                                        capture_output=True).returncode == 0 or server.poll() is not None,
                 30, "the healthcheck to pass")
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        assert (data / "models").is_dir() and (data / "staging").is_dir()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == \
            (installed.checkout / "web" / "dist" / "index.html").read_bytes(), "the UI installed with the wheel"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    assert subprocess.run(health, env=clean_env(MODELDROP_PORT=str(port)), capture_output=True).returncode == 1


def test_worker_healthcheck_follows_a_real_rq_worker(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh test installs it)")
    redis = RedisProcess(tmp_path / "redis").start()
    worker = WorkerProcess(tmp_path / "data", redis.url, tmp_path / "worker.log")
    health = [sys.executable, str(HEALTHCHECK), "worker"]

    def healthy() -> bool:
        return subprocess.run(health, env=clean_env(REDIS_URL=redis.url), capture_output=True).returncode == 0
    try:
        assert not healthy(), "no worker registered yet"
        worker.start()
        wait_for(lambda: healthy() or not worker.alive(), 30, "the worker to register")
        assert worker.alive(), worker.log()
        worker.stop()
        assert not healthy(), "a stopped worker unregisters"
    finally:
        worker.stop()
        redis.stop()
    assert subprocess.run(health, env=clean_env(REDIS_URL=redis.url), capture_output=True).returncode == 1
    assert subprocess.run(health, env=clean_env(), capture_output=True).returncode == 1, "REDIS_URL unset"


# ---------------------------------------------------------------- llama-server as compose runs it

def get_json(port: int, path: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    return response.status, json.loads(body) if body.startswith((b"{", b"[")) else body


@pytest.mark.llama
def test_llama_server_with_the_compose_flags_rescans_a_read_only_models_mount(tmp_path: Path, mount,
                                                                             processes: list[Any]) -> None:
    """The compose service's own command line, on the real binary, reading the models folder through a
    read-only bind mount (the compose `:ro` volume) while models are published into it by rename."""
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("no llama-server binary: run scripts/build-llama-server.sh to build one")
    models, staging, view = tmp_path / "data" / "models", tmp_path / "data" / "staging", tmp_path / "llama-models"
    for directory in (models, staging, view):
        directory.mkdir(parents=True)
    write_model(models / "first.gguf")
    if os.geteuid() == 0:
        mount("--bind", str(models), target=view)
        mount("-o", "remount,bind,ro", target=view)
        with pytest.raises(OSError):
            (view / "probe").write_bytes(b"")
    else:
        view = models

    port = free_port()
    command = load_compose()["services"]["llama-server"]["command"]
    values = {"--models-dir": str(view), "--port": str(port), "--host": "127.0.0.1"}
    argv = [str(binary)] + [values.get(command[i - 1], word) if i % 2 else word for i, word in enumerate(command)]
    llama = Process(tmp_path / "llama-server.log")
    processes.append(llama)
    llama._spawn(argv)

    def listed() -> set[str] | None:
        try:
            status, body = get_json(port, "/models")
        except OSError:
            return None
        return {entry["id"] for entry in body["data"]} if status == 200 else None
    assert wait_for(lambda: listed() or not llama.alive(), 60, "llama-server to answer") == {"first"}, llama.log()
    health = load_compose()["services"]["llama-server"]["healthcheck"]["test"][-1]
    assert get_json(port, urlparse(health).path) == (200, {"status": "ok"})

    write_model(staging / "second.gguf.tmp")
    os.rename(staging / "second.gguf.tmp", models / "second.gguf")
    (staging / "split").mkdir()
    write_split_set(staging / "split", "tiny", 2)
    os.rename(staging / "split", models / "tiny-split")
    assert listed() == {"first"}, "the router does not watch the directory"
    status, body = get_json(port, "/models?reload=1")
    assert status == 200 and {entry["id"] for entry in body["data"]} == {"first", "second", "tiny-split"}
    assert listed() == {"first", "second", "tiny-split"}
