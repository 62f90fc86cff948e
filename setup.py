"""Builds the web UI into web/dist when a wheel is made from a checkout that has none yet.

Everything else about the package is declared in setup.cfg.
"""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB = Path(__file__).resolve().parent / "web"


class BuildWithWebUI(build_py):
    def run(self) -> None:
        if not getattr(self, "editable_mode", False) and not (WEB / "dist" / "index.html").exists():
            npm = shutil.which("npm")
            if npm is None:
                raise SystemExit("modeldrop: the web UI is not built (web/dist) and npm is not installed to build "
                                 "it; install Node.js and npm, or run `cd web && npm ci && npm run build` first")
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
            subprocess.run([npm, "run", "build"], cwd=WEB, check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithWebUI})
