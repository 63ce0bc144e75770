#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs a command with N llama-servers (scripts/llama-server.sh) on free 127.0.0.1 ports, their
# base URLs in MOA_ENDPOINTS (comma-separated), and stops them by pid afterwards. Exits 77
# (ctest: skipped) when the server is not built, unless MOA_LLAMA_REQUIRED=1.
#   tests/with_llama.sh N COMMAND [ARGS...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
server="$here/../scripts/llama-server.sh"
n=$1
shift
dir="${MOA_LLAMA_DIR:-$(bash "$server" dir)}"
if [ ! -x "$dir/bin/llama-server" ]; then
  echo "SKIPPED: no llama-server in $dir; run scripts/llama-server.sh build"
  [ "${MOA_LLAMA_REQUIRED:-0}" = 1 ] && exit 1
  exit 77
fi
pids=()
cleanup() {  # in parallel: a server may take a second or two to exit on SIGTERM
  for p in "${pids[@]}"; do bash "$server" stop "$p" & done
  wait
}
trap cleanup EXIT
urls=""
for _ in $(seq "$n"); do
  for try in 1 2 3; do  # a random port; another one if it was taken
    port=$((20000 + RANDOM % 30000))
    # shellcheck disable=SC2086
    if pid=$(MOA_LLAMA_CACHE="$dir" bash "$server" start "$port" ${MOA_LLAMA_ARGS:-}); then break; fi
    [ "$try" = 3 ] && exit 1
  done
  pids+=("$pid")
  urls="${urls:+$urls,}http://127.0.0.1:$port/v1"
done
export MOA_ENDPOINTS="$urls"
"$@"
