#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Sets up a fresh Debian 12 machine and runs the whole test suite:
#   1. format check (clang-format, the committed .clang-format);
#   2. plain build with -Werror: unit tests, compile-fail tests, header and packaging tests,
#      examples (and the bad-input corpus, when the ASan stage does not run it);
#   2b. release: the README's first command (scripts/run.sh: g++ -O2 with -Werror, whose warnings
#      differ from -O0's, then the main job on the embedded models), which must answer "ok";
#   3. AddressSanitizer + UndefinedBehaviorSanitizer build: unit tests and examples; with the
#      llama stage selected, also the tests labelled `llama` (below), on this same build.
#   4. ThreadSanitizer build with clang 14 (the other stages use g++ 12, so both compilers
#      build every test): unit tests; not the examples, not the bad-input corpus (ASan runs them:
#      it checks memory and exit codes of one-thread runs) and not the llama tests (ASan again).
#   5. llama: builds a real llama.cpp server and a tiny model (scripts/llama-server.sh; cached,
#      ~1 min the first time) before the ASan stage, whose build runs the tests labelled `llama`
#      against it with the server required; alone, this stage builds and runs just those tests.
#   6. fuzz: libFuzzer (clang 14) on the HTTP backend's parsers for MOA_FUZZ_SECONDS (60).
#   7. fuzz-net: libFuzzer (clang 14) on the ZeroMQ network's message decoder and handler for
#      MOA_FUZZ_SECONDS (60); both fuzz stages share one build.
# MOA_TEST_STAGES selects stages (default: "format plain release asan tsan llama fuzz fuzz-net").
set -euo pipefail
MOA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$MOA_ROOT"
source scripts/setup.sh

stages="${MOA_TEST_STAGES:-format plain release asan tsan llama fuzz fuzz-net}"
jobs="$(nproc)"
started=$SECONDS

has_stage() { [[ " $stages " == *" $1 "* ]]; }
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

# Compile time is most of this script's time. Measured on this 2-core VM, the CLI's translation
# unit takes 91 s with g++ -O0 -g and 54 s at -g1; under ASan, 560 s at -O2 -g and 268 s at
# -O1 -g1. -g1 keeps the line tables that backtraces and the sanitizers' reports print; -O1 is
# what the sanitizers' manuals recommend. Assertions stay on (Debug).
plain_build=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-g1")
sanitizer_build=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1")

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
      # With the llama stage selected, the llama tests run once, in the ASan build; with the asan
      # stage selected, so does the bad-input corpus (sanitized, it also checks memory).
      plain_exclude=()
      if has_stage llama; then plain_exclude+=(llama); fi
      if has_stage asan; then plain_exclude+=(corpus); fi
      build_and_test plain "$(IFS='|'; echo "${plain_exclude[*]}")" "${plain_build[@]}"
      ;;
    release)
      stage "release build: the README's first command (scripts/run.sh)"
      mkdir -p build
      bash scripts/run.sh | tee build/run-sh.log
      grep -q "^status: ok" build/run-sh.log || { echo "moa: scripts/run.sh did not answer ok" >&2; exit 1; }
      ;;
    asan | llama)
      # One ASan build serves both stages: with llama selected the asan stage configures it with
      # the server and runs the llama tests too (required: a missing server fails them); the
      # llama stage then only runs what the asan stage did not.
      export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
      export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      asan_options=("${sanitizer_build[@]}" -DMOA_DEV_SANITIZE=address
                    -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF)
      if has_stage llama; then
        if [ -z "${llama_dir:-}" ]; then
          stage "llama.cpp server: build (cached)"
          bash scripts/llama-server.sh build
          llama_dir="$(bash scripts/llama-server.sh dir)"
        fi
        export MOA_LLAMA_REQUIRED=1
        asan_options+=(-DMOA_LLAMA_DIR="$llama_dir")
      fi
      if [ "$s" = asan ]; then
        stage "AddressSanitizer + UBSan$(has_stage llama && echo ', with the llama tests')"
        build_and_test asan "compile_fail|packaging" "${asan_options[@]}"
      elif ! has_stage asan; then
        stage "llama tests (ASan+UBSan)"
        cmake -S . -B build/asan -G Ninja "${asan_options[@]}" >/dev/null
        cmake --build build/asan -j "$jobs" --target moa_openai_llama_tests openai_moa moa_cli \
          moa_network_process_tests
        run_ctest build/asan -L llama
      else
        echo "moa: the llama tests ran in the ASan stage"
      fi
      ;;
    tsan)
      stage "ThreadSanitizer (clang 14)"
      export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
      # Not the examples: the tests cover their threads, and ASan runs them.
      build_and_test tsan "compile_fail|packaging|llama|corpus" "${sanitizer_build[@]}" \
        -DCMAKE_CXX_COMPILER=clang++-14 -DMOA_BUILD_EXAMPLES=OFF \
        -DMOA_DEV_SANITIZE=thread -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF
      ;;
    fuzz | fuzz-net)
      if [ "$s" = fuzz ]; then
        target=moa_fuzz_openai binary=tests/moa_fuzz_openai corpus=build/fuzz/corpus-openai
        stage "libFuzzer on the HTTP backend's parsers (clang 14, ${MOA_FUZZ_SECONDS:-60} s)"
      else
        target=moa_fuzz_net binary=programs/moa_fuzz_net corpus=build/fuzz/corpus-net
        stage "libFuzzer on the network's message decoder (clang 14, ${MOA_FUZZ_SECONDS:-60} s)"
      fi
      cmake -S . -B build/fuzz -G Ninja "${sanitizer_build[@]}" \
        -DCMAKE_CXX_COMPILER=clang++-14 -DMOA_DEV_FUZZ=ON -DMOA_BUILD_EXAMPLES=OFF \
        -DMOA_DEV_HEADER_TESTS=OFF -DMOA_INSTALL=OFF >/dev/null
      cmake --build build/fuzz -j "$jobs" --target "$target"
      rm -rf "$corpus"
      mkdir -p "$corpus"
      if [ "$s" = fuzz ]; then
        for f in tests/fixtures/openai/*.body; do  # first byte: the stream's piece size
          { printf '\0'; cat "$f"; } >"$corpus/$(basename "$f").whole"
          { printf '\7'; cat "$f"; } >"$corpus/$(basename "$f").pieces"
        done
      else
        cp tests/fixtures/net/*.json "$corpus"/
      fi
      "build/fuzz/$binary" -max_total_time="${MOA_FUZZ_SECONDS:-60}" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -15  # pipefail: its status
      ;;
    *) echo "moa: unknown test stage '$s'" >&2; exit 2 ;;
  esac
done
stage "all stages passed"
echo "moa: $passed passed, $failed failed"
