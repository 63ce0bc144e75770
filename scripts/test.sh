#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Sets up a fresh Debian 12 machine and runs the whole test suite:
#   1. format check (clang-format, the committed .clang-format);
#   2. plain build with -Werror: unit tests, compile-fail tests, header and packaging tests,
#      examples;
#   3. AddressSanitizer + UndefinedBehaviorSanitizer build: unit tests and examples;
#   4. ThreadSanitizer build with clang 14 (the other stages use g++ 12, so both compilers
#      build every test): unit tests and examples.
#   5. llama: builds a real llama.cpp server and a tiny model (scripts/llama-server.sh; cached,
#      ~1 min the first time), then runs the tests labelled `llama` against it, with ASan+UBSan.
#   6. fuzz: libFuzzer (clang 14) on the HTTP backend's parsers for MOA_FUZZ_SECONDS (60).
#   7. fuzz-net: libFuzzer (clang 14) on the ZeroMQ network's message decoder and handler for
#      MOA_FUZZ_SECONDS (60).
# MOA_TEST_STAGES selects stages (default: "format plain asan tsan llama fuzz fuzz-net").
set -euo pipefail
MOA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$MOA_ROOT"
source scripts/setup.sh

stages="${MOA_TEST_STAGES:-format plain asan tsan llama fuzz fuzz-net}"
jobs="$(nproc)"
started=$SECONDS

stage() { printf '\n=== %s (%ds elapsed) ===\n' "$1" $((SECONDS - started)); }

# Totals over every ctest run, printed at the end as "N passed, N failed".
passed=0
failed=0
run_ctest() {  # dir, ctest arguments...
  local dir=$1 log
  shift
  log="$dir/ctest-output.log"
  (cd "$dir" && ctest -j "$jobs" --output-on-failure --timeout 600 "$@") | tee "$log"
  local total bad
  total=$(sed -n 's/.* tests failed out of \([0-9]*\)$/\1/p' "$log" | tail -1)
  bad=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of.*/\1/p' "$log" | tail -1)
  passed=$((passed + ${total:-0} - ${bad:-0}))
  failed=$((failed + ${bad:-0}))
}

build_and_test() {  # name, ctest label filter, cmake options...
  local name=$1 exclude=$2
  shift 2
  cmake -S . -B "build/$name" -G Ninja "$@" >/dev/null
  cmake --build "build/$name" -j "$jobs"
  run_ctest "build/$name" ${exclude:+-LE "$exclude"}
}

for s in $stages; do
  case "$s" in
    format)
      stage "format check"
      git ls-files '*.hpp' '*.cpp' | xargs clang-format --dry-run --Werror
      ;;
    plain)
      stage "plain build (-Werror), all tests"
      build_and_test plain "" -DCMAKE_BUILD_TYPE=Debug
      ;;
    asan)
      stage "AddressSanitizer + UBSan"
      export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
      export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      build_and_test asan "compile_fail|packaging" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DMOA_DEV_SANITIZE=address -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF
      ;;
    tsan)
      stage "ThreadSanitizer (clang 14)"
      export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
      build_and_test tsan "compile_fail|packaging" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_COMPILER=clang++-14 \
        -DMOA_DEV_SANITIZE=thread -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF
      ;;
    llama)
      stage "llama.cpp server: build (cached), integration tests (ASan+UBSan)"
      bash scripts/llama-server.sh build
      export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
      export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      export MOA_LLAMA_REQUIRED=1  # here a missing server fails the tests instead of skipping them
      cmake -S . -B build/llama -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DMOA_DEV_SANITIZE=address -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF \
        -DMOA_LLAMA_DIR="$(bash scripts/llama-server.sh dir)" >/dev/null
      cmake --build build/llama -j "$jobs" --target moa_openai_llama_tests openai_moa moa_cli \
        moa_network_process_tests moa_device
      run_ctest build/llama -L llama
      ;;
    fuzz)
      stage "libFuzzer on the HTTP backend's parsers (clang 14, ${MOA_FUZZ_SECONDS:-60} s)"
      cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_COMPILER=clang++-14 -DMOA_DEV_FUZZ=ON -DMOA_BUILD_EXAMPLES=OFF \
        -DMOA_BUILD_PROGRAMS=OFF -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF >/dev/null
      cmake --build build/fuzz -j "$jobs" --target moa_fuzz_openai
      corpus=build/fuzz/corpus
      mkdir -p "$corpus"
      for f in tests/fixtures/openai/*.body; do  # first byte: the stream's piece size
        { printf '\0'; cat "$f"; } >"$corpus/$(basename "$f").whole"
        { printf '\7'; cat "$f"; } >"$corpus/$(basename "$f").pieces"
      done
      build/fuzz/tests/moa_fuzz_openai -max_total_time="${MOA_FUZZ_SECONDS:-60}" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -15  # pipefail: its status
      ;;
    fuzz-net)
      stage "libFuzzer on the network's message decoder (clang 14, ${MOA_FUZZ_SECONDS:-60} s)"
      cmake -S . -B build/fuzz-net -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_COMPILER=clang++-14 -DMOA_DEV_FUZZ=ON -DMOA_BUILD_TESTS=OFF -DMOA_BUILD_EXAMPLES=OFF \
        -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF >/dev/null
      cmake --build build/fuzz-net -j "$jobs" --target moa_fuzz_net
      corpus=build/fuzz-net/corpus
      mkdir -p "$corpus"
      cp tests/fixtures/net/*.json "$corpus"/
      build/fuzz-net/programs/moa_fuzz_net -max_total_time="${MOA_FUZZ_SECONDS:-60}" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -15  # pipefail: its status
      ;;
    *) echo "moa: unknown test stage '$s'" >&2; exit 2 ;;
  esac
done
stage "all stages passed"
echo "moa: $passed passed, $failed failed"
