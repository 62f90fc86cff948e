"""The package as a user installs it: a wheel built from a clean checkout, in fresh venvs outside the repository.

One wheel is built from a copy of the tracked files (no web/dist, no node_modules: its build step makes the UI),
installed with its dependencies into one venv; the uploader-only distribution (cli/) goes into another. The
installed `modeldrop serve` then serves the UI and receives a model that the uploader-only `modeldrop upload`
sends, with the checkout nowhere on sys.path.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import zipfile
from pathlib import Path

from tests.deploy.support import REPO, SYSTEM_PATH, Installed, checked, clean_env
from tests.ggufgen import write_model
from tests.support.processes import free_port, wait_for

SERVER_DEPENDENCIES = {"starlette", "uvicorn", "uvloop", "httptools", "redis", "rq", "prometheus-client"}


def test_the_wheel_holds_one_modeldrop_package_with_the_web_ui(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"modeldrop", installed.wheel.name.split("-py3")[0] + ".dist-info"}
    for folder in ("server", "worker", "cli"):
        sources = {path.relative_to(REPO).as_posix() for path in (REPO / folder).rglob("*.py")
                   if "build" not in path.parts}
        assert {f"modeldrop/{source}" for source in sources} <= set(names), folder
    built_ui = {name for name in names if name.startswith("modeldrop/web/")}
    assert "modeldrop/web/index.html" in built_ui and any(name.endswith(".js") for name in built_ui), built_ui
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "modeldrop = modeldrop.cli.main:main" in zipfile.ZipFile(installed.wheel).read(entry_points).decode()


def test_every_installed_module_imports_outside_the_checkout(installed: Installed) -> None:
    script = ("import importlib, pkgutil, modeldrop\n"
              "names = [m.name for m in pkgutil.walk_packages(modeldrop.__path__, 'modeldrop.')]\n"
              "for name in names:\n"
              "    module = importlib.import_module(name)\n"
              "    assert '/checkout/' not in module.__file__ and module.__file__.startswith(%r), module.__file__\n"
              "print(len(names))\n") % str(installed.full)
    imported = int(checked(installed.run(installed.full, "python", "-c", script)).stdout)
    assert imported == len([path for folder in ("server", "worker", "cli") for path in (REPO / folder).rglob("*.py")
                            if "build" not in path.parts])


def test_the_uploader_only_install_pulls_no_server_dependency(installed: Installed) -> None:
    listed = checked(installed.run(installed.uploader, "pip", "list", "--format=freeze")).stdout
    packages = {line.split("==")[0].lower() for line in listed.split()}
    assert packages - {"pip", "setuptools", "wheel"} == {"modeldrop-upload"}
    assert not SERVER_DEPENDENCIES & packages
    assert checked(installed.run(installed.uploader, "modeldrop", "--version")).stdout.split() == \
        checked(installed.run(installed.full, "modeldrop", "--version")).stdout.split()
    refused = installed.run(installed.uploader, "modeldrop", "serve")
    assert refused.returncode == 2 and "needs the server" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_installed_serve_serves_the_ui_and_receives_an_upload_from_the_installed_uploader(
        installed: Installed, tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    model = write_model(tmp_path / "tiny.gguf")
    env = clean_env(PATH=f"{installed.full / 'bin'}:{SYSTEM_PATH}")
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen([str(installed.full / "bin" / "modeldrop"), "serve", "--host", "127.0.0.1",
                                   "--port", str(port), "--data-dir", str(data)], cwd=tmp_path, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def page() -> bytes | None:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/")
                response = connection.getresponse()
                return response.read() if response.status == 200 else None
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                return None

        body = wait_for(page, 30, "the installed server to answer GET /")
        assert body == (installed.checkout / "web" / "dist" / "index.html").read_bytes(), "the UI built into the wheel"
        upload = installed.run(installed.uploader, "modeldrop", "upload", str(model), "--server",
                               f"http://127.0.0.1:{port}", timeout=120)
        assert upload.returncode == 0, upload.stdout + upload.stderr + (tmp_path / "server.log").read_text()
        assert (data / "models" / "tiny.gguf").read_bytes() == model.read_bytes()
        assert oct((data / "models" / "tiny.gguf").stat().st_mode & 0o777) == "0o644"
    finally:
        os.killpg(server.pid, 15)
        server.wait(20)
