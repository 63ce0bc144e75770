#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Sets up a fresh Debian 12 machine, builds moa and runs the main job: a layered MoA on the
# embedded synthetic models (no LLM server, no GPU). Extra arguments go to `moa run`.
set -euo pipefail
MOA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$MOA_ROOT"
source scripts/setup.sh

cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOA_BUILD_TESTS=OFF \
  -DMOA_BUILD_EXAMPLES=OFF -DMOA_DEV_HEADER_TESTS=OFF >/dev/null
cmake --build build/release --target moa_cli
if [ $# -eq 0 ]; then
  set -- "Why is the sky blue?" --layers 2 --proposers 3 --aggregator 1
fi
exec build/release/programs/moa run "$@"
