"""Puts the web UI into the wheel as modeldrop/web, building it (web/dist, with npm) when a checkout has none.

Everything else about the package is declared in setup.cfg. An editable install skips this: the server
then serves the checkout's web/dist.
"""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB = Path(__file__).resolve().parent / "web"


def build_web_ui() -> Path:
    dist = WEB / "dist"
    if not (dist / "index.html").is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("modeldrop: the web UI is not built (web/dist) and npm is not installed to build "
                             "it; install Node.js and npm, or run `cd web && npm ci && npm run build` first")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
        subprocess.run([npm, "run", "build"], cwd=WEB, check=True)
    return dist


class BuildWithWebUI(build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "modeldrop" / "web"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(build_web_ui(), target, ignore=shutil.ignore_patterns(".*"))


setup(cmdclass={"build_py": BuildWithWebUI})
