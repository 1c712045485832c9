#!/usr/bin/env bash
# Build llama.cpp's `llama-server`, `llama-quantize` and `llama-perplexity` from source into a cache,
# for the serving benchmark's llama.cpp peer (benchmarks/serve_llamacpp.py) and for Q4_K_M GGUF
# export (`distill export --format gguf --quant q4_k_m`). Never part of the default install.
#
#   bash benchmarks/build_llamacpp.sh   # -> ${DISTILL_CACHE:-~/.cache/distill}/llama.cpp/<version>/bin
#   DISTILL_LLAMACPP_HOME=/opt/llamacpp bash benchmarks/build_llamacpp.sh
#
# The source is the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python (a registry, by
# its ordinary client), pinned below. The build is CPU-only, native ISA, static, without the
# server's web UI (whose prebuilt assets would be downloaded) and without HTTPS/curl. It prints
# the build's wall time; a rerun with the binaries present does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
HOME_DIR=${DISTILL_LLAMACPP_HOME:-${DISTILL_CACHE:-$HOME/.cache/distill}/llama.cpp}
DEST="$HOME_DIR/$VERSION"
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-$(nproc)}
TARGETS=(llama-server llama-quantize llama-perplexity)

if [ -x "$DEST/bin/llama-server" ] && [ -x "$DEST/bin/llama-quantize" ] && [ -x "$DEST/bin/llama-perplexity" ]; then
  echo "build_llamacpp: already built in $DEST/bin"
  exit 0
fi
command -v cmake >/dev/null || { echo "build_llamacpp: cmake is not installed (apt-get install cmake)" >&2; exit 2; }
command -v c++ >/dev/null || { echo "build_llamacpp: no C++ compiler (apt-get install g++)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/llamacpp-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

"$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
fetched=$(date +%s)

cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  >"$WORK/cmake.log" 2>&1 || { tail -30 "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" --config Release -j "$JOBS" --target "${TARGETS[@]}" \
  >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; exit 1; }

mkdir -p "$HOME_DIR"
STAGE=$(mktemp -d "$HOME_DIR/.tmp-$VERSION.XXXXXX")
mkdir -p "$STAGE/bin"
for t in "${TARGETS[@]}"; do cp "$WORK/build/bin/$t" "$STAGE/bin/"; done
end=$(date +%s)
cat >"$STAGE/BUILD.json" <<EOF
{"source": "llama-cpp-python==$VERSION sdist, vendor/llama.cpp", "targets": "${TARGETS[*]}",
 "jobs": $JOBS, "fetch_s": $((fetched - start)), "build_s": $((end - fetched)),
 "machine": "$(nproc) cpus, $(uname -m)", "date": "$(date +%F)"}
EOF
rm -rf "$DEST"
mv "$STAGE" "$DEST"
echo "build_llamacpp: built ${TARGETS[*]} into $DEST/bin in $((end - start)) s" \
  "(fetch $((fetched - start)) s, build $((end - fetched)) s, -j $JOBS)"
