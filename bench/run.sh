#!/usr/bin/env bash
# Benchmarks modeldrop against the peers and the machine; see bench/run.py for options.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m bench "$@"
