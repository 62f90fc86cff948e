#!/usr/bin/env bash
# Boot checks, then runs modeldrop. Used by `scripts/setup.sh run` and as the container's entrypoint.
#
#   scripts/start.sh [serve|worker] [modeldrop options]   (default: serve)
#   scripts/start.sh COMMAND [ARGS]                        any other command runs as is, without the checks
#                                                          (e.g. `docker compose run --rm server sh`)
#
# Before handing over (exec) to `modeldrop serve|worker`, with the same options:
#   - resolves the data, models and staging directories exactly as modeldrop does: a flag
#     (--data-dir/--models-dir/--staging-dir, as "--x V" or "--x=V") over MODELDROP_DATA_DIR,
#     MODELDROP_MODELS_DIR, MODELDROP_STAGING_DIR, over the defaults ./data, <data>/models, <data>/staging;
#   - creates the models and staging directories and checks that each is writable;
#   - checks that staging and models are on one filesystem and mount, since publishing a model is a
#     rename(2) from staging into models (across filesystems it fails with EXDEV);
#   - lists the models already installed, with sizes, and the free space.
# It exits non-zero with a message, and does not start modeldrop, when a check fails.
# `modeldrop` is taken from PATH, else from the repo's .venv/bin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf 'start: %s\n' "$*"; }
die() { printf 'start: error: %s\n' "$*" >&2; exit 1; }

find_modeldrop() {
    if command -v modeldrop >/dev/null 2>&1; then
        command -v modeldrop
    elif [ -x "$ROOT/.venv/bin/modeldrop" ]; then
        echo "$ROOT/.venv/bin/modeldrop"
    else
        die "modeldrop is not installed: run scripts/setup.sh deps (or pip install .), or put it on PATH"
    fi
}

# option_value NAME DEFAULT ARGS... : the value of the last --NAME V / --NAME=V in ARGS (argparse: last wins)
option_value() {
    local name="--$1" value="$2"
    shift 2
    while [ $# -gt 0 ]; do
        case "$1" in
            "$name") [ $# -gt 1 ] && { value="$2"; shift; } ;;
            "$name="*) value="${1#"$name="}" ;;
            --) break ;;
        esac
        shift
    done
    printf '%s\n' "$value"
}

human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1" 2>/dev/null || printf '%s bytes\n' "$1"; }

# size_of FILE... : apparent size in bytes, summed (sparse files count at their full length)
size_of() {
    local total=0 size
    for file in "$@"; do
        size="$(stat -c %s -- "$file")"
        total=$((total + size))
    done
    echo "$total"
}

check_writable() {
    local dir="$1" python
    # A file made with O_TMPFILE has no name: a real write test that puts no entry in models/, which
    # llama-server may list at any moment. Where there is no python or no O_TMPFILE, access(2) decides.
    python="$(find_python)"
    if [ -n "$python" ]; then
        "$python" - "$dir" <<'EOF' && return 0
import errno, os, sys
try:
    os.close(os.open(sys.argv[1], os.O_TMPFILE | os.O_WRONLY, 0o600))
except OSError as exc:
    if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR) or not os.access(sys.argv[1], os.W_OK):
        sys.exit(1)
EOF
    elif [ -w "$dir" ]; then
        return 0
    fi
    die "$dir is not writable by uid $(id -u) gid $(id -g): fix its owner or permissions" \
        "(for Docker: chown the host folder to the image's UID/GID, or build with --build-arg UID=... GID=...)," \
        "or mount it read-write"
}

find_python() {
    local python
    python="$(command -v python3 || command -v python || echo "$ROOT/.venv/bin/python")"
    if [ -x "$python" ]; then echo "$python"; fi
}

check_same_filesystem() {
    local models="$1" staging="$2" dev_models dev_staging python
    dev_models="$(stat -c %d -- "$models")"
    dev_staging="$(stat -c %d -- "$staging")"
    if [ "$dev_models" != "$dev_staging" ]; then
        die "staging ($staging, device $dev_staging) and models ($models, device $dev_models) are on different" \
            "filesystems: a finished upload is published by rename, which cannot cross filesystems." \
            "Put both on one volume, e.g. MODELDROP_DATA_DIR=/data with models and staging inside it"
    fi
    # Two mounts of one filesystem (say, two Docker bind mounts) share a device number but still refuse
    # rename(2) with EXDEV, so ask rename(2) itself. Renaming onto models/. is always refused, but the kernel
    # refuses a crossing of mounts (EXDEV) before it looks at either name: nothing is created anywhere.
    python="$(find_python)"
    [ -n "$python" ] || { say "no python found: skipped the rename check"; return 0; }
    if ! "$python" - "$staging/.modeldrop-rename-probe" "$models/." <<'EOF'
import errno, os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
except OSError as exc:
    if exc.errno == errno.EXDEV:
        sys.exit(f"start: error: renaming from {os.path.dirname(sys.argv[1])} to {os.path.dirname(sys.argv[2])} "
                 f"failed: {exc.strerror}")
EOF
    then
        die "staging ($staging) and models ($models) are on one filesystem but different mounts:" \
            "mount one volume at a common parent (e.g. /data) instead of mounting models and staging separately"
    fi
}

list_models() {
    local models="$1" count=0 path name files
    say "models in $models:"
    shopt -s nullglob
    for path in "$models"/*.gguf; do
        [ -f "$path" ] || continue
        say "  $(basename -- "$path")  $(human "$(size_of "$path")")"
        count=$((count + 1))
    done
    for path in "$models"/*/; do
        name="$(basename -- "$path")"
        files=("$path"*.gguf)
        if [ ${#files[@]} -eq 0 ]; then
            say "  $name/  (no .gguf files: llama-server ignores it)"
            continue
        fi
        say "  $name/  ${#files[@]} file(s), $(human "$(size_of "${files[@]}")")"
        count=$((count + 1))
    done
    shopt -u nullglob
    [ "$count" -gt 0 ] || say "  (none yet)"
}

free_space() {
    local kib
    kib="$(df -Pk -- "$1" | awk 'NR == 2 { print $4 }')"
    human "$((kib * 1024))"
}

COMMAND=serve
case "${1:-}" in
    serve|worker) COMMAND="$1"; shift ;;
    ""|-*) ;;
    *) exec "$@" ;;
esac

MODELDROP="$(find_modeldrop)"
for arg in "$@"; do
    case "$arg" in -h|--help) exec "$MODELDROP" "$COMMAND" "$@" ;; esac
done

DATA="$(option_value data-dir "${MODELDROP_DATA_DIR:-./data}" "$@")"
MODELS="$(option_value models-dir "${MODELDROP_MODELS_DIR:-$DATA/models}" "$@")"
STAGING="$(option_value staging-dir "${MODELDROP_STAGING_DIR:-$DATA/staging}" "$@")"
for dir in "$MODELS" "$STAGING"; do
    mkdir -p -- "$dir" 2>/dev/null || die "cannot create $dir (uid $(id -u)): check the permissions of its parent"
done
MODELS="$(cd -- "$MODELS" && pwd)"
STAGING="$(cd -- "$STAGING" && pwd)"
# The same values for modeldrop (its flags, passed through unchanged, say the same where given).
export MODELDROP_DATA_DIR="$DATA" MODELDROP_MODELS_DIR="$MODELS" MODELDROP_STAGING_DIR="$STAGING"
export MODELDROP_HOST="${MODELDROP_HOST:-127.0.0.1}" MODELDROP_PORT="${MODELDROP_PORT:-8080}"

check_writable "$MODELS"
check_writable "$STAGING"
check_same_filesystem "$MODELS" "$STAGING"

list_models "$MODELS"
say "free space: $(free_space "$MODELS") on the models/staging filesystem"
leftovers="$(find "$STAGING" -mindepth 1 -maxdepth 1 | wc -l)"
say "staging $STAGING: $leftovers entries; unfinished uploads and crash leftovers there are reconciled by the server at start"

if [ "$COMMAND" = serve ]; then
    say "starting modeldrop serve on $(option_value host "$MODELDROP_HOST" "$@"):$(option_value port "$MODELDROP_PORT" "$@")"
else
    say "starting modeldrop worker"
fi
exec "$MODELDROP" "$COMMAND" "$@"
