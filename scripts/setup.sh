#!/usr/bin/env bash
# Sets up everything modeldrop needs on a fresh Debian/Ubuntu machine, then runs it.
#
#   scripts/setup.sh run  [serve options]   set up, then start the server (embedded mode) on 127.0.0.1:8080
#   scripts/setup.sh test [pytest options]  set up (with test tools), then run the whole test suite
#   scripts/setup.sh deps                   set up only
#
# Idempotent and quick when nothing changed: each step leaves a stamp with a hash of its inputs.
# System packages (python3-venv, nodejs/npm, redis-server, chromium) come from apt when run as root;
# otherwise it says which ones to install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE="${1:-deps}"
[ $# -gt 0 ] && shift

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31msetup: %s\033[0m\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    # apt_install PACKAGE... : installs missing Debian packages as root, or explains what is missing.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing system packages: ${missing[*]} -- install them with: sudo apt-get install -y ${missing[*]}"
    fi
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get here; install them by hand"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

setup_python() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null || { apt_install python3 python3-venv; python=python3; }
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "modeldrop needs Python 3.11 or newer; $python is $("$python" --version 2>&1)"
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv 2>/dev/null || { apt_install python3-venv; rm -rf .venv; "$python" -m venv .venv; }
    fi
    # $1: "base" (enough to run) or "test"; a test install also satisfies base
    local want="$1" base have
    base="$(stamp_of setup.cfg setup.py pyproject.toml)"
    have="$(cat .venv/.modeldrop-stamp 2>/dev/null || true)"
    if [ "$have" != "$base-test" ] && [ "$have" != "$base-$want" ]; then
        say "installing Python packages into .venv ($want)"
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        if [ "$want" = test ]; then
            .venv/bin/python -m pip install -q -e ".[test]"
        else
            .venv/bin/python -m pip install -q -e .
        fi
        echo "$base-$want" > .venv/.modeldrop-stamp
    fi
}

setup_node() {
    command -v npm >/dev/null || apt_install nodejs npm
}

npm_install() {
    # npm_install DIR : installs DIR's locked npm dependencies when the lock changed
    local dir="$1" stamp
    stamp="$(stamp_of "$dir/package.json" "$dir/package-lock.json")"
    if [ "$(cat "$dir/node_modules/.modeldrop-stamp" 2>/dev/null)" != "$stamp" ]; then
        say "npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$stamp" > "$dir/node_modules/.modeldrop-stamp"
    fi
}

setup_web() {
    [ -f web/package.json ] || return 0
    setup_node
    npm_install web
    local stamp
    stamp="$(find web/src web/package.json web/package-lock.json web/build.mjs -type f 2>/dev/null | sort | xargs cat | sha256sum | cut -c1-16)"
    if [ "$(cat web/dist/.modeldrop-stamp 2>/dev/null)" != "$stamp" ]; then
        say "building the web UI into web/dist"
        (cd web && npm run --silent build)
        echo "$stamp" > web/dist/.modeldrop-stamp
    fi
}

setup_test_tools() {
    command -v redis-server >/dev/null || apt_install redis-server
    [ -x /usr/bin/chromium ] || apt_install chromium
    # the deploy tests lint scripts/start.sh and resolve docker-compose.yml (no Docker engine needed)
    command -v shellcheck >/dev/null || apt_install shellcheck
    # the power-cut tests mount a FUSE filesystem (tests/support/powercut.py: mfusepy on libfuse3)
    command -v fusermount3 >/dev/null || apt_install fuse3
    command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || apt_install docker-compose
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx-light  # tests/reliability/test_load_balancer.py
    [ -f tests/js/package.json ] && { setup_node; npm_install tests/js; }
    return 0
}

case "$MODE" in
    deps)
        setup_python test
        setup_web
        setup_test_tools
        ;;
    run)
        setup_python base
        setup_web
        export PATH="$ROOT/.venv/bin:$PATH"
        exec "$ROOT/scripts/start.sh" serve "$@"
        ;;
    test)
        setup_python test
        setup_web
        setup_test_tools
        export PATH="$ROOT/.venv/bin:$PATH"
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        die "unknown mode '$MODE' (use run, test or deps)"
        ;;
esac
