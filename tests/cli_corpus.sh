#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Bad input never crashes, never lies: runs every subcommand of `moa` (and `moa_device`) over a
# generated corpus of bad arguments and bad config files, and fails on any signal exit, any exit
# code but the documented ones (0, 1, 2; 2 where the input is certainly wrong), any run over the
# time bound, or memory over the bound (ulimit -v where the build allows it, peak RSS always).
#
#   tests/cli_corpus.sh MOA [MOA_DEVICE]
#
# MOA_CORPUS_PART=commands|devices runs one half (ctest runs the two side by side; the device
# cases wait on servers more than they compute); the default runs both.
# Prints the number of cases tried per class. Needs bash, coreutils' timeout and GNU time.
set -uo pipefail

moa=${1:?usage: cli_corpus.sh MOA [MOA_DEVICE]}
data="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/examples/data"
moa_device=${2:-}
part=${MOA_CORPUS_PART:-all}
case "$part" in
  all | commands | devices) ;;
  *) echo "cli_corpus: MOA_CORPUS_PART='$part' is not one of all, commands, devices" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

time_limit=${MOA_CORPUS_TIME_LIMIT:-60}  # seconds per case; ASan builds are slow
rss_limit_kb=$((1536 * 1024))             # peak resident memory per case
vmem_limit_kb=$((4 * 1024 * 1024))        # address space, where the build allows a limit

# An ASan build reserves terabytes of address space: it cannot run under ulimit -v, so only the
# peak RSS bounds it.
use_ulimit=1
if ! { (ulimit -v "$vmem_limit_kb" && "$moa" --version) >/dev/null 2>&1; } 2>/dev/null; then
  use_ulimit=0
fi
gnu_time=/usr/bin/time
[ -x "$gnu_time" ] || { echo "cli_corpus: GNU time (/usr/bin/time) is missing" >&2; exit 1; }

declare -A count=()
failures=0
total=0

# Waits (up to 20 s, however loaded the machine) until something listens on a loopback TCP port:
# a case that needs a port taken must not race the start of the device holding it.
wait_listening() {  # wait_listening PORT
  for _ in $(seq 400); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "cli_corpus: nothing listens on port $1 after 20 s" >&2
}

# check CLASS EXPECT CMD...: EXPECT is "2" (certainly bad input) or "any" (0, 1 or 2).
# Device commands that are valid serve until stopped: for them, "serve" also accepts a clean
# exit after SIGTERM at the time bound, and "serving" accepts only that (a valid device must not
# exit on its own).
check() {
  local class=$1 expect=$2
  shift 2
  local timeout_s=$time_limit
  [ "$expect" = serve ] || [ "$expect" = serving ] && timeout_s=3
  count[$class]=$((${count[$class]:-0} + 1))
  total=$((total + 1))
  local out="$work/out" err="$work/err" rss="$work/rss"
  (
    [ "$use_ulimit" = 1 ] && ulimit -v "$vmem_limit_kb"
    # time outside timeout: a SIGTERM at the bound reaches the program only (GNU time would die
    # of it at once, and the next case would start while a device still drains on its port).
    exec "$gnu_time" -q -f %M -o "$rss" timeout -s TERM -k 10 "$timeout_s" "$@"
  ) <"${CASE_STDIN:-/dev/null}" >"$out" 2>"$err"
  local rc=$?
  local why=""
  local peak
  peak=$(tail -n 1 "$rss" 2>/dev/null | tr -dc 0-9)
  if { [ "$expect" = serve ] || [ "$expect" = serving ]; } && [ "$rc" = 124 ]; then
    :  # a valid device, stopped cleanly by SIGTERM
  elif [ "$expect" = serving ]; then
    why="exit $rc where a valid device must serve until stopped"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    why="ran over ${timeout_s} s"
  elif [ "$rc" -gt 2 ]; then
    why="exit $rc (a signal or an undocumented code)"
    grep -q "Command terminated by signal" "$rss" 2>/dev/null && why="killed by a signal: $(grep -o 'signal [0-9]*' "$rss")"
  elif [ "$expect" = 2 ] && [ "$rc" != 2 ]; then
    why="exit $rc where bad input must exit 2"
  elif [ "$rc" = 2 ] && ! grep -q . "$err"; then
    why="exit 2 without a message on stderr"
  fi
  if [ -z "$why" ] && [ -n "$peak" ] && [ "$peak" -gt "$rss_limit_kb" ]; then
    why="peak memory ${peak} kB over ${rss_limit_kb} kB"
  fi
  if [ -n "$why" ]; then
    failures=$((failures + 1))
    printf 'FAIL [%s] %s\n  %s\n' "$class" "$why" "$(printf '%q ' "$@")"
    head -c 600 "$err" | sed 's/^/  stderr: /'
  fi
}

# --- value classes -----------------------------------------------------------------------------
negative=(-1 -2147483649 -0.5)
zero=(0 0.0)
huge=(4294967297 18446744073709551616 1e400)
nonfinite=(nan -inf infinity 1e999)
wrong_type=(abc "" 0x10 "1 2" --)
huge_seed=(18446744073709551616 99999999999999999999999999 1e400)

# numeric_cases SUBCOMMAND-ARGS... -- OPTIONS...: every value class on every option, with the
# subcommand's cheap base arguments (BASE_<option> removed for the option under test).
numeric_cases() {
  local -a base=()
  while [ "$1" != -- ]; do
    base+=("$1")
    shift
  done
  shift
  local opt v
  for opt in "$@"; do
    local -a b=()
    local i=0
    # drop "opt value" from the base arguments
    while [ $i -lt ${#base[@]} ]; do
      if [ "${base[$i]}" = "$opt" ]; then
        i=$((i + 2))
        continue
      fi
      b+=("${base[$i]}")
      i=$((i + 1))
    done
    for v in "${negative[@]}"; do check negative 2 "${b[@]}" "$opt" "$v"; done
    local -a zeros=("${zero[@]}")
    [ "${ZERO_EXPECT:-any}" = serve ] && zeros=(0)  # a valid device serves for seconds
    for v in "${zeros[@]}"; do check zero "${ZERO_EXPECT:-any}" "${b[@]}" "$opt" "$v"; done
    if [ "$opt" = --seed ] || [ "$opt" = --plant-seed ]; then
      for v in "${huge_seed[@]}"; do check huge 2 "${b[@]}" "$opt" "$v"; done
    else
      for v in "${huge[@]}"; do check huge 2 "${b[@]}" "$opt" "$v"; done
    fi
    for v in "${nonfinite[@]}"; do check nan_inf 2 "${b[@]}" "$opt" "$v"; done
    for v in "${wrong_type[@]}"; do check wrong_type 2 "${b[@]}" "$opt" "$v"; done
  done
}

enum_cases() {  # enum_cases BASE... -- OPTIONS...
  local -a base=()
  while [ "$1" != -- ]; do
    base+=("$1")
    shift
  done
  shift
  local opt v
  for opt in "$@"; do
    for v in bogus "" EXPONENTIAL "inline " weibull 0; do check wrong_enum 2 "${base[@]}" "$opt" "$v"; done
  done
}

# --- the subcommands ---------------------------------------------------------------------------
if [ "$part" != devices ]; then
run_base=("$moa" run hi --latency-ms 0)
numeric_cases "${run_base[@]}" -- --layers --proposers --aggregator --threads --latency-ms \
  --sigma --error-rate --seed --timeout-ms --call-timeout-ms --quorum --judge --top --keep
enum_cases "${run_base[@]}" -- --executor --format --latency --policy --extract

bench_base=("$moa" bench -n 5 --latency-ms 0 --latency-runs 1)
numeric_cases "${bench_base[@]}" -- --layers --proposers --runs --threads --in-flight \
  --latency-ms --latency-runs
enum_cases "${bench_base[@]}" -- --path --policy --latency

search_base=("$moa" search --quiet --iterations 2 --particles 2 --patience 1)
numeric_cases "${search_base[@]}" -- --models --seed --plant-seed --particles --iterations \
  --patience --step --top-p --threads

stability_base=("$moa" stability)
numeric_cases "${stability_base[@]}" -- --devices --layers --fanout --lambda --alpha --sigma
enum_cases "${stability_base[@]}" -- --service --format

simulate_base=("$moa" simulate -r 1 --horizon 200)
numeric_cases "${simulate_base[@]}" -- --devices --layers --fanout --lambda --alpha --sigma \
  --horizon --warmup --replications --threads --seed --sample
enum_cases "${simulate_base[@]}" -- --service
for v in 0.1:0.9:99999999 0.1:0.9:0 0.1:0.9:-1 0:1:3 0.9:0.1:3 nan:1:3 0.1:inf:3 1:2 abc \
  0.1:0.9:3:4 0.1:1e400:3 0.1:0.9:1e3 -1:1:2 0.1:11:2 " 0.1:0.9:3"; do
  check sweep 2 "${simulate_base[@]}" --sweep "$v"
done

adaptive_base=("$moa" simulate --adaptive --phase 200 --ramp 0.5:1:2)
numeric_cases "${adaptive_base[@]}" -- --target --hysteresis --rate-window --latency-objective \
  --phase --devices --layers --fanout --alpha --seed
for v in 0.5:2:101 0.5:2:0 0:1:3 2:1:3 nan:1:3 0.5:11:2 1:2 abc 0.5:2:3:4 " 0.5:2:3"; do
  check ramp 2 "${adaptive_base[@]}" --ramp "$v"
done
for v in "" 2x "x2" 2x4 0x1 65x1 2x2=nan 2x2=inf 2x2= 2y2 2x2,,1x1 2x-1 "2x2 " \
  "$(printf '1x1,%.0s' {1..65})1x1"; do
  check layouts 2 "${adaptive_base[@]}" --layouts "$v"
done
check mismatch 2 "${adaptive_base[@]}" --sweep 0.1:0.9:3
check mismatch 2 "${adaptive_base[@]}" --lambda 0.1
check mismatch 2 "${adaptive_base[@]}" --service constant
check mismatch 2 "${adaptive_base[@]}" --plot -
check mismatch 2 "${adaptive_base[@]}" --phase 1e7 --ramp 10:10:100
check mismatch 2 "$moa" simulate -r 1 --horizon 200 --target 0.5
check mismatch 2 "$moa" simulate -r 1 --horizon 200 --plot out.svg

adaptive_live=("$moa" network --adaptive --alpha-ms 0.05 --phase 20 --ramp 0.5:1:2)
numeric_cases "${adaptive_live[@]}" -- --target --hysteresis --rate-window --latency-objective \
  --phase
check mismatch 2 "${adaptive_live[@]}" --gossip least-loaded
check mismatch 2 "${adaptive_live[@]}" --lambda 0.1
check mismatch 2 "${adaptive_live[@]}" --layouts 2x9
check mismatch 2 "${adaptive_live[@]}" --ramp 0.5:2:0
check mismatch 2 "${adaptive_live[@]}" --phase 1e7 --ramp 10:10:100
check mismatch 2 "$moa" network --prompts 40 --alpha-ms 0.05 --ramp 0.5:1:2

network_base=("$moa" network --prompts 40 --alpha-ms 0.05)
numeric_cases "${network_base[@]}" -- --devices --layers --fanout --alpha-ms --load --lambda \
  --prompts --capacity --seed
enum_cases "${network_base[@]}" -- --gossip --latency
check mismatch 2 "$moa" network -n 4 --alpha-ms 1,2
check mismatch 2 "$moa" network -n 3 -k 3
check mismatch 2 "$moa" stability -n 4 -k 4
check mismatch 2 "$moa" stability -n 4 --lambda 0.1 --lambda 0.2
check mismatch 2 "$moa" simulate --warmup 300 --horizon 200
check mismatch 2 "$moa" run hi --aggregator 5 --proposers 2
check mismatch 2 "$moa" run hi --judge 7 --policy judge
check mismatch 2 "$moa" run hi --prompt-file /dev/null
check mismatch 2 "$moa" run

eval_base=("$moa" eval --roster "$data/roster_synthetic.json" --dataset "$data/arithmetic.jsonl"
  --score number --bootstrap 20)
numeric_cases "${eval_base[@]}" -- --in-flight --bootstrap --confidence --seed
enum_cases "${eval_base[@]}" -- --format --score
check mismatch 2 "${eval_base[@]}" --layout no-such-layout
check mismatch 2 "${eval_base[@]}" --score pairwise
check mismatch 2 "${eval_base[@]}" --score rubric --judge no-such-model

replay_base=("$moa" replay --times "$data/measured_times.json" --prompts 5)
numeric_cases "${replay_base[@]}" -- --prompts --rate --seed
enum_cases "${replay_base[@]}" -- --format
for v in 3:1 0:9 a:b 1 -1:1 1:-1 4294967297:1 1e400:1 "" 1:1:1; do
  check mismatch 2 "${replay_base[@]}" --config "$v"
done

# moa serve --adaptive: every bad option exits 2 before the server binds (a valid one would serve
# until stopped, so only certainly bad input is tried here). The options apply to --adaptive only.
serve_base=("$moa" serve --listen 127.0.0.1:0 --adaptive)
# A valid zero (--hysteresis 0, ...) serves: stopped by SIGTERM at the bound, it must exit cleanly.
ZERO_EXPECT=serve numeric_cases "${serve_base[@]}" -- --target --hysteresis --rate-window \
  --latency-objective --prior-service --warmup-prompts --confidence-z
for v in "" 2x 2x3 3x1 0x1 65x1 2x2=nan 2y2 2x2,,1x1 "2x2 "; do
  check serve 2 "${serve_base[@]}" --layouts "$v"
done
for v in nope alpha ""; do check serve 2 "${serve_base[@]}" --adaptive-layout "$v"; done
for opt in "--target 0.5" "--layouts 1x1" "--rate-window 5" "--prior-service 2" \
  "--warmup-prompts 3" "--confidence-z 1" "--adaptive-layout moa"; do
  # shellcheck disable=SC2086
  check serve 2 "$moa" serve --listen 127.0.0.1:0 $opt
done
serve_roster_case() {  # serve_roster_case LAYOUT-JSON: one layout "l" over models a and b
  printf '{"models": {"a": {"kind": "synthetic"}, "b": {"kind": "synthetic"}}, "layouts": {"l": %s}}' \
    "$1" >"$work/serve_roster.json"
  check serve 2 "$moa" serve --listen 127.0.0.1:0 --roster "$work/serve_roster.json"
}
for text in '{"layers": [["a", "b"]], "aggregator": "a", "adaptive": {"bogus": 1}}' \
  '{"layers": [["a", "b"]], "aggregator": "a", "adaptive": {"target": 2}}' \
  '{"layers": [["a", "b"]], "aggregator": "a", "adaptive": {"target": "high"}}' \
  '{"layers": [["a", "b"]], "aggregator": "a", "adaptive": {"layouts": "2x1"}}' \
  '{"layers": [["a", "b"]], "aggregator": "a", "adaptive": {"rate_window": 5}}' \
  '{"layers": [["a", "b"]], "aggregator": "a", "adaptive": 1}' \
  '{"layers": [["a", "b"]], "aggregator": "a", "policy": "vote", "adaptive": true}' \
  '{"layers": [["a"], ["a", "b"]], "aggregator": "a", "adaptive": true}' \
  '{"nodes": ["a", "b"], "edges": [[0, 1]], "adaptive": true}' \
  '{"model": "a", "adaptive": true}'; do
  serve_roster_case "$text"
done
# Two layered layouts, l and m: with l marked, --adaptive-layout may not name m; with both marked,
# one must be named; with none marked, --adaptive must be told which.
serve_two() {  # serve_two L-EXTRA M-EXTRA ARGS...: l and m with extra keys, then moa serve ARGS
  printf '{"models": {"a": {"kind": "synthetic"}, "b": {"kind": "synthetic"}}, "layouts": {"l": {"layers": [["a", "b"]], "aggregator": "a"%s}, "m": {"layers": [["a", "b"]], "aggregator": "b"%s}}}' \
    "$1" "$2" >"$work/serve_roster2.json"
  shift 2
  check serve 2 "$moa" serve --listen 127.0.0.1:0 --roster "$work/serve_roster2.json" "$@"
}
serve_two ', "adaptive": true' '' --adaptive-layout m
serve_two ', "adaptive": {"target": 0.5}' '' --adaptive --adaptive-layout m
serve_two ', "adaptive": true' ', "adaptive": {}'
serve_two '' '' --adaptive

# Unknown and misspelt options, missing values.
for sub in run bench search stability simulate network eval replay; do
  check unknown_option 2 "$moa" "$sub" --bogus
  check unknown_option 2 "$moa" "$sub" --layer 2
  check unknown_option 2 "$moa" "$sub" --seed
done
check unknown_option 2 "$moa" bogus
check unknown_option 2 "$moa"

# --- paths ---------------------------------------------------------------------------------------
touch "$work/file"
mkdir -p "$work/folder"
bad_out=(/nonexistent/dir/x "$work/file/x" "$work/folder" /proc/nonexistent/x "")
for p in "${bad_out[@]}"; do
  [ -z "$p" ] && continue
  check unwritable_path 2 "$moa" run hi --dot "$p"
  check unwritable_path 2 "$moa" simulate -r 1 --horizon 200 --csv "$p"
  check unwritable_path 2 "$moa" simulate -r 1 --horizon 200 --json "$p"
  check unwritable_path 2 "${adaptive_base[@]}" --plot "$p"
  check unwritable_path 2 "${adaptive_base[@]}" --csv "$p"
  check unwritable_path 2 "$moa" search --quiet --iterations 1 --json "$p"
  check unwritable_path 2 "$moa" search --quiet --iterations 1 --dot "$p"
  check unwritable_path 2 "${eval_base[@]}" --results "$p"
  check unwritable_path 2 "${eval_base[@]}" --json "$p"
  check unwritable_path 2 "${eval_base[@]}" --plot "$p"
  check unwritable_path 2 "$moa" simulate -r 1 --horizon 200 --sweep 0.1:0.5:2 --plot "$p"
done
check unwritable_path 2 "$moa" simulate -r 1 --horizon 200 --sweep 0.1:0.5:2 --plot -
check mismatch 2 "$moa" simulate -r 1 --horizon 200 --plot "$work/never.svg"
bad_in=(/nonexistent/x "$work/folder" "$work/file/x" /dev/zero)
for p in "${bad_in[@]}"; do
  check missing_path 2 "$moa" run --prompt-file "$p"
  check missing_path 2 "$moa" stability --config "$p"
  check missing_path 2 "$moa" simulate --config "$p"
  check missing_path 2 "$moa" network --config "$p"
  check missing_path 2 "$moa" eval --roster "$p" --dataset "$data/arithmetic.jsonl"
  check missing_path 2 "$moa" eval --roster "$data/roster_synthetic.json" --dataset "$p"
  check missing_path 2 "$moa" replay --times "$p"
  check missing_path 2 "$moa" run hi --roster "$p"
  check missing_path 2 "$moa" search --quiet --roster "$p" --dataset "$data/arithmetic.jsonl"
done
# Rosters, datasets and measured times that are wrong inside (each names the key or line).
roster_case() {  # roster_case TEXT
  printf '%s' "$1" >"$work/roster.json"
  check roster 2 "$moa" eval --roster "$work/roster.json" --dataset "$data/arithmetic.jsonl"
  check roster 2 "$moa" run hi --roster "$work/roster.json"
  check roster 2 "$moa" search --quiet --roster "$work/roster.json" --dataset "$data/arithmetic.jsonl"
}
for text in '' '{' '[]' '{"models": 4}' '{"models": {"a": {"endpoint": "file:///etc/passwd"}}}' \
  '{"models": {"a": {"retries": 99}}}' '{"models": {"a": {"typo": 1}}}' '{"modles": {}}' \
  '{"models": {"a": {"timeout_ms": -1}}}' '{"models": {"a": {"timeout_ms": 1e400}}}' \
  "$(printf '%*s' 100000 '' | tr ' ' '[')" \
  '{"models": {"a": {}}, "layouts": {"l": {"aggregator": "a", "policy": {"name": "sparse", "moderate": 1}}}}' \
  '{"models": {"a": {}}, "layouts": {"l": {"aggregator": "a", "policy": {"moderat": true}}}}' \
  '{"models": {"d": {"kind": "device"}}}' \
  '{"models": {"d": {"kind": "device", "endpoint": "http://127.0.0.1:1/v1", "insecure_plaintext": true}}}' \
  '{"models": {"d": {"kind": "device", "endpoint": "tcp://127.0.0.1:1"}}}' \
  '{"models": {"d": {"kind": "device", "endpoint": "tcp://127.0.0.1:1", "insecure_plaintext": 1}}}' \
  '{"models": {"d": {"kind": "device", "endpoint": "tcp://127.0.0.1:1", "key_file": "k.key"}}}' \
  '{"models": {"d": {"kind": "device", "endpoint": "tcp://10.0.0.1:1", "insecure_plaintext": true}}}' \
  '{"models": {"d": {"kind": "device", "endpoint": "tcp://127.0.0.1:1", "insecure_plaintext": true, "model": "m"}}}' \
  '{"models": {"d": {"kind": "device", "endpoint": "tcp://127.0.0.1:1", "key_file": "/nonexistent.key", "server_key_file": "/nonexistent.pub"}}}' \
  '{"models": {"a": {"insecure_plaintext": true}}}'; do
  roster_case "$text"
done
# Roster flags of moa run and moa search: what a roster replaces is refused with it, a layout must
# exist, and the flags that beat it are checked as always.
roster_ok=("$data/roster_synthetic.json")
for flag in "--layers 2" "--proposers 2" "--aggregator 1" "--judge 1" "--latency-ms 1" \
  "--error-rate 0.5" "--endpoint http://127.0.0.1:1/v1" "--model m" "--api-key-env K"; do
  # shellcheck disable=SC2086
  check roster_flags 2 "$moa" run hi --roster "${roster_ok[@]}" $flag
done
for v in no-such-layout "" "moa vote"; do
  check roster_flags 2 "$moa" run hi --roster "${roster_ok[@]}" --layout "$v"
done
check roster_flags 2 "$moa" run hi --layout moa-vote
numeric_cases "$moa" run hi --roster "${roster_ok[@]}" -- --top --keep --max-tokens
enum_cases "$moa" run hi --roster "${roster_ok[@]}" -- --policy --extract
for flag in "--endpoint http://127.0.0.1:1/v1" "--model m" "--models 3" "--joint"; do
  # shellcheck disable=SC2086
  check roster_flags 2 "$moa" search --quiet --roster "${roster_ok[@]}" \
    --dataset "$data/arithmetic.jsonl" $flag
done
check roster_flags 2 "$moa" search --quiet --roster "${roster_ok[@]}"
# moa search's judge utility (--utility judge --judge MODEL): every bad value or combination exits
# 2 with a message that names the option at fault.
check_named() {  # check_named OPTION CLASS CMD...
  local opt=$1 class=$2
  shift 2
  local before=$failures
  check "$class" 2 "$@"
  if [ "$failures" = "$before" ] && ! grep -qF -- "$opt" "$work/err"; then
    failures=$((failures + 1))
    printf 'FAIL [%s] the message does not name %s\n  %s\n' "$class" "$opt" "$(printf '%q ' "$@")"
    head -c 600 "$work/err" | sed 's/^/  stderr: /'
  fi
}
for v in bogus "" JUDGE rubric exact choice; do  # exact and choice need a dataset's references
  check_named --utility search "$moa" search --quiet --utility "$v"
done
check_named --utility search "$moa" search --quiet --joint --utility judge
check_named --judge search "$moa" search --quiet --judge alpha
check_named --judge search "$moa" search --quiet --utility judge --judge alpha
check_named --judge-max-tokens search "$moa" search --quiet --utility judge --judge-max-tokens 9
check_named --dataset search "$moa" search --quiet --utility judge --dataset "$data/arithmetic.jsonl"
if "$moa" search --help 2>/dev/null | grep -q -- --endpoint; then  # built with libcurl
  search_roster=("$moa" search --quiet --iterations 1 --particles 1 --roster "${roster_ok[@]}"
    --dataset "$data/arithmetic.jsonl")
  check_named --judge search "${search_roster[@]}" --utility judge
  for v in nope "" alpha,beta " gamma"; do
    check_named --judge search "${search_roster[@]}" --utility judge --judge "$v"
  done
  check_named --judge search "${search_roster[@]}" --judge gamma
  check_named --judge-max-tokens search "${search_roster[@]}" --judge-max-tokens 9
  for v in 0 -1 abc 1e400 nan 2000000; do
    check_named --judge-max-tokens search "${search_roster[@]}" --utility judge --judge gamma \
      --judge-max-tokens "$v"
  done
  printf '{"models": {"a": {"kind": "synthetic"}}}' >"$work/one.json"
  check_named --judge search "$moa" search --quiet --roster "$work/one.json" \
    --dataset "$data/arithmetic.jsonl" --utility judge --judge a
  check_named --judge search "$moa" search --quiet --endpoint http://127.0.0.1:1/v1 \
    --dataset "$data/arithmetic.jsonl" --utility judge --judge beta
  check_named --judge search "$moa" search --quiet --endpoint http://127.0.0.1:1/v1 \
    --dataset "$data/arithmetic.jsonl" --utility judge --judge alpha  # no node left
  printf '{"prompt": "x", "reference": 4}\n' >"$work/judge_data.jsonl"
  check_named --dataset search "$moa" search --quiet --roster "${roster_ok[@]}" \
    --dataset "$work/judge_data.jsonl" --utility judge --judge gamma
fi
for text in '' '{' '{"prompt": 4}' '{"prompt": "x", "reference": [[[[1]]]]}' 'not json' \
  $'{"prompt": "\xff\xfe", "reference": "1"}'; do
  printf '%s\n' "$text" >"$work/data.jsonl"
  check dataset any "${eval_base[@]::2}" --roster "$data/roster_synthetic.json" \
    --dataset "$work/data.jsonl" --score number --bootstrap 20
done
for text in '' '{' '{"devices": 4}' '{"devices": [{"layers": [-1]}]}' '{"devices": []}' \
  '{"devices": [{"layers": [1e400]}]}' '{"unit": "ms", "typo": 1}'; do
  printf '%s' "$text" >"$work/times.json"
  check measured_times 2 "$moa" replay --times "$work/times.json"
done
# `-` is stdout and stdin everywhere.
check stdio any "$moa" simulate -r 1 --horizon 200 --csv -
check stdio any "$moa" simulate -r 1 --horizon 200 --json -
check stdio any "$moa" run hi --dot -
head -c 100000 /dev/zero | tr '\0' 'a' >"$work/prompt"
CASE_STDIN="$work/prompt" check stdio any "$moa" run --prompt-file -
CASE_STDIN=/dev/zero check stdio 2 "$moa" run --prompt-file -

# --- config files ------------------------------------------------------------------------------
config_case() {  # config_case CLASS EXPECT TEXT
  printf '%s' "$3" >"$work/c.json"
  check "$1" "$2" "$moa" stability --config "$work/c.json"
  check "$1" "$2" "$moa" simulate -r 1 --horizon 200 --config "$work/c.json"
  check "$1" "$2" "$moa" network --prompts 40 --config "$work/c.json"
}
for key in devices layers fanout lambda alpha sigma; do
  for v in -4 1e400 4294967297 '"4"' true null '{}' '[[1]]' '[]' 1e999; do
    config_case config_value 2 "{\"$key\": $v}"
  done
done
for v in '"weibull"' 4 '""' '["constant"]'; do config_case config_value 2 "{\"service\": $v}"; done
for key in lambdas Devices "" help config n; do config_case config_unknown_key 2 "{\"$key\": 4}"; done
config_case config_unknown_key 2 '{"adjacency": [[0,1],[1,0]], "devices": 2, "typo": 1}'
for depth in 20 1000 100000; do
  config_case config_deep 2 "$(printf '%*s' "$depth" '' | tr ' ' '[')$(printf '%*s' "$depth" '' | tr ' ' ']')"
  config_case config_deep 2 "{\"lambda\": $(printf '%*s' "$depth" '' | tr ' ' '[')1$(printf '%*s' "$depth" '' | tr ' ' ']')}"
done
for text in '' '{' '[1,2]' '4' '{"devices": 4,}' '{"devices": NaN}' $'{"service": "\xff\xfe"}' \
  '{"devices": 4} {"devices": 5}' '{"a":1, "a":2}' 'null'; do
  config_case config_invalid 2 "$text"
done
printf '{"devices": 4%*s}' 2000000 '' >"$work/big.json"
check config_invalid 2 "$moa" stability --config "$work/big.json"
# adjacency (stability and simulate only)
for a in '[[0,1],[1,0]]' '[[0,1,1,1]]' '[[0,-1,1,1],[1,0,1,1],[1,1,0,1],[1,1,1,0]]' \
  '[["a",1,1,1],[1,0,1,1],[1,1,0,1],[1,1,1,0]]' '[[0,0,0,0],[0,0,0,0],[0,0,0,0],[0,0,0,0]]' \
  '[[0,1,0,0],[1,0,0,0],[0,0,0,1],[0,0,1,0]]' '"x"' '[[0,1e999,1,1],[1,0,1,1],[1,1,0,1],[1,1,1,0]]'; do
  printf '{"devices": 4, "adjacency": %s}' "$a" >"$work/c.json"
  check config_adjacency 2 "$moa" stability --config "$work/c.json"
  check config_adjacency 2 "$moa" simulate -r 1 --horizon 200 --config "$work/c.json"
done
# The command line beats the file, which beats the defaults (and the file is still checked).
printf '{"devices": 4, "fanout": 2, "lambda": 0.05}' >"$work/net.json"
if ! "$moa" stability --config "$work/net.json" -k 3 | grep -q "k = 3 peers"; then
  echo "FAIL [precedence] --config net.json -k 3 did not run with k = 3"
  failures=$((failures + 1))
fi
count[precedence]=1
total=$((total + 1))

fi  # the subcommands

# --- devices -----------------------------------------------------------------------------------
device_cases() {  # device_cases PROGRAM...
  local p1=$((20000 + RANDOM % 20000))
  # Three devices, so that the default k = 2 is valid and each case reaches the option it is about.
  local peers="tcp://127.0.0.1:$p1,tcp://127.0.0.1:$((p1 + 1)),tcp://127.0.0.1:$((p1 + 2))"
  local -a base=("$@" device --insecure-plaintext --index 0 --peers "$peers")
  ZERO_EXPECT=serve numeric_cases "${base[@]}" -- --index --layers --fanout --alpha-ms \
    --capacity --peer-timeout-ms --dead-after-ms --seed
  enum_cases "${base[@]}" -- --gossip --latency
  for v in "" bogus "tcp://" "http://127.0.0.1:1" "tcp://127.0.0.1:$p1"; do
    check device_peers 2 "${base[@]:0:3}" --index 0 --peers "$v"
  done
  # CLI11 drops the empty element a trailing comma makes: the device serves the peers listed.
  check device_peers serving "${base[@]:0:3}" --index 0 --peers "$peers,"
  check device_peers 2 "${base[@]:0:3}" --index 3 --peers "$peers"
  check device_peers 2 "${base[@]:0:3}" --index 0 --peers "$peers" -k 3
  check device_peers 2 "${base[@]:0:3}" --index 0 --peers "$peers" --bind "udp://*:1"
  check device_peers 2 "${base[@]:0:3}" --index 0 --peers "tcp://no.such.host.invalid:1,$peers"
  # A device's model from a roster: --model must name one of its models; flags it replaces and
  # bad roster files are refused before the device binds.
  local roster_file="$data/roster_synthetic.json"
  local -a dev=("$@" device --insecure-plaintext --index 0 --peers "$peers" -k 1)
  for v in "" no-such-model; do
    check device_roster 2 "${dev[@]}" --roster "$roster_file" --model "$v"
  done
  check device_roster 2 "${dev[@]}" --roster "$roster_file"
  check device_roster 2 "${dev[@]}" --roster "$roster_file" --model alpha --alpha-ms 2
  check device_roster 2 "${dev[@]}" --model alpha  # a model of nothing: not silently ignored
  for p in /nonexistent/x "$work/folder" /dev/zero; do
    check device_roster 2 "${dev[@]}" --roster "$p" --model alpha
  done
  printf '{"models": {"alpha": {"kind": "synthetic", "typo": 1}}}' >"$work/device_roster.json"
  check device_roster 2 "${dev[@]}" --roster "$work/device_roster.json" --model alpha
  # A good one serves its roster model until stopped.
  check device_roster serving "${dev[@]}" --roster "$roster_file" --model beta
  # --adaptive (docs/ADAPTIVE.md): each policy option's bad values exit 2 naming it; policy
  # options without --adaptive are an error, not ignored; a config file's keys likewise (unknown
  # keys exit 2; flags beat the file).
  local -a ad=("${base[@]}" --adaptive)
  for v in "" x 2x 3x3 0x1 65x1 2x2=abc 2x2=1e400 "2x2,,1x1" "1x1=" "-1x1"; do
    check device_adaptive 2 "${ad[@]}" --layouts "$v"
  done
  for v in 0 1 1.5 -0.1 nan abc; do check device_adaptive 2 "${ad[@]}" --target "$v"; done
  for v in -0.1 0.95 nan abc; do check device_adaptive 2 "${ad[@]}" --hysteresis "$v"; done
  for v in 0 -1 1e400 nan; do check device_adaptive 2 "${ad[@]}" --rate-window "$v"; done
  for v in -1 nan inf abc; do check device_adaptive 2 "${ad[@]}" --latency-objective "$v"; done
  for v in 0 -1 nan 1,2 1,2,3,4 60001 abc; do
    check device_adaptive 2 "${ad[@]}" --prior-service-ms "$v"
  done
  for v in -1 abc 1e400 1000001; do check device_adaptive 2 "${ad[@]}" --warmup-prompts "$v"; done
  for o in "--layouts 1x1" "--target 0.5" "--prior-service-ms 5" "--warmup-prompts 3"; do
    # shellcheck disable=SC2086
    check device_adaptive 2 "${base[@]}" $o
  done
  check device_adaptive 2 "${ad[@]}" --gossip least-loaded
  printf '{"adaptive": 1, "layouts": "2x2,1x1", "typo": 1}' >"$work/device_adaptive.json"
  check device_adaptive 2 "${base[@]}" --config "$work/device_adaptive.json"
  printf '{"adaptive": 1, "layouts": "9x9"}' >"$work/device_adaptive.json"
  check device_adaptive 2 "${base[@]}" --config "$work/device_adaptive.json"
  printf '{"adaptive": 1, "target": "high"}' >"$work/device_adaptive.json"
  check device_adaptive 2 "${base[@]}" --config "$work/device_adaptive.json"
  printf '{"layouts": "2x2,1x1"}' >"$work/device_adaptive.json"
  check device_adaptive 2 "${base[@]}" --config "$work/device_adaptive.json"
  check device_adaptive 2 "${base[@]}" --config "$work/missing.json"
  printf '{"adaptive": 1, "layouts": "9x9", "prior-service-ms": [1, 2, 3]}' >"$work/device_adaptive.json"
  check device_adaptive serving "${base[@]}" --config "$work/device_adaptive.json" --layouts 2x2,1x1
  check device_adaptive serving "${ad[@]}" --layouts 2x2=0.9,1x1=0.5,1x0 --target 0.7 \
    --prior-service-ms 1,2,3 --warmup-prompts 0 --latency-objective 500
  # A port in use: a first device holds it while a second tries to bind it.
  "${base[@]}" >/dev/null 2>&1 &
  local holder=$!
  wait_listening "$p1"
  check device_port_in_use 2 "${base[@]}"
  kill -TERM "$holder" 2>/dev/null
  wait "$holder" 2>/dev/null
  # --metrics [HOST:]PORT (where the program has it): bad addresses and ports exit 2, and so does
  # a port another device's endpoint already holds.
  if "$@" device --help 2>/dev/null | grep -q -- --metrics; then
    for v in "" 0 65536 99999 -1 abc ":" "127.0.0.1:" "127.0.0.1:0" "localhost:9100" \
      "1.2.3.4.5:80" "[::1]:x" "127.0.0.1:9100:1" "$(printf 'a%.0s' {1..5000}):1"; do
      check device_metrics 2 "${base[@]}" --metrics "$v"
    done
    local m=$((p1 + 3))
    "${base[@]}" --metrics "127.0.0.1:$m" >/dev/null 2>&1 &
    holder=$!
    wait_listening "$m"
    check device_metrics_in_use 2 "$@" device --insecure-plaintext --index 1 --peers "$peers" \
      --metrics "$m"
    kill -TERM "$holder" 2>/dev/null
    wait "$holder" 2>/dev/null
  fi
  key_cases "tcp://127.0.0.1:$p1,tcp://127.0.0.1:$((p1 + 1))" "$@"
}

# Keys (docs/NETWORK.md, key management): keygen's paths; a device's key files (missing, not a
# key, readable by others, not the listed one, the wrong count); plain text only when asked and
# only on loopback; the client's actions and keys.
key_cases() {  # key_cases PEERS PROGRAM...
  local peers=$1
  shift
  local keys="$work/keys"
  rm -rf "$keys" && mkdir -p "$keys"
  "$@" keygen --out "$keys/d0" >/dev/null && "$@" keygen --out "$keys/d1" >/dev/null &&
    "$@" keygen --out "$keys/c" >/dev/null || { echo "FAIL [keygen] could not write keys"; failures=$((failures + 1)); }
  for v in "" "$keys/" "$keys/no/such/dir/x" "$keys/d0" "$keys/.." /dev/null/x; do
    check keygen 2 "$@" keygen --out "$v"
  done
  check keygen 2 "$@" keygen
  cp "$keys/d0.key" "$keys/open.key" && chmod 644 "$keys/open.key"
  printf 'not a key\n' >"$keys/junk.key" && chmod 600 "$keys/junk.key"
  printf '%s\n' "$(sed -n 2p "$keys/d0.key")" "$(sed -n 2p "$keys/d0.key")" >"$keys/two.key"
  chmod 600 "$keys/two.key"
  head -c 2000000 /dev/zero >"$keys/big.pub"
  local -a dev=("$@" device --index 0 --peers "$peers" -k 1)
  local pk="$keys/d0.pub,$keys/d1.pub"
  check device_keys 2 "${dev[@]}"  # neither keys nor --insecure-plaintext
  for k in "$keys/missing.key" "$keys/open.key" "$keys/junk.key" "$keys/two.key" "$keys" \
    /dev/zero "$keys/d1.key" "$keys/d0.pub"; do
    check device_keys 2 "${dev[@]}" --key "$k" --peers-keys "$pk"
  done
  for p in "$keys/d0.pub" "$keys/d0.pub,$keys/d0.pub" "$pk,$keys/c.pub" "$keys/junk.key,$keys/d1.pub" \
    "$keys/big.pub,$keys/d1.pub" "$keys/missing.pub,$keys/d1.pub" /dev/zero; do
    check device_keys 2 "${dev[@]}" --key "$keys/d0.key" --peers-keys "$p"
  done
  check device_keys 2 "${dev[@]}" --key "$keys/d0.key"
  check device_keys 2 "${dev[@]}" --key "$keys/d0.key" --peers-keys "$pk" --clients-keys "$keys/d1.pub"
  check device_keys 2 "${dev[@]}" --key "$keys/d0.key" --peers-keys "$pk" --clients-keys "$keys/junk.key"
  check device_keys 2 "${dev[@]}" --key "$keys/d0.key" --peers-keys "$pk" --insecure-plaintext
  check device_keys 2 "$@" device --insecure-plaintext --index 0 --peers "tcp://10.0.0.1:1,$peers"
  check device_keys 2 "$@" device --insecure-plaintext --index 0 --peers "$peers" --bind "tcp://*:1"
  check device_peers 2 "$@" device --index 0 --peers "tcp://no.such.host.invalid:1,$peers" \
    --key "$keys/d0.key" --peers-keys "$pk,$keys/c.pub"
  mkdir -p "$keys/clients" && cp "$keys/c.pub" "$keys/clients/"
  check device_keys serving "${dev[@]}" --key "$keys/d0.key" --peers-keys "$pk" --clients-keys "$keys/clients"
}

# moa submit: bad input only (a valid submit to nobody exits 4, which is not bad input).
submit_cases() {
  local keys="$work/keys" ep="tcp://127.0.0.1:1"
  local -a sub=("$moa" submit --device "$ep")
  check submit 2 "${sub[@]}" --insecure-plaintext  # nothing to do
  check submit 2 "${sub[@]}" --insecure-plaintext -p hi --stats
  check submit 2 "${sub[@]}" --insecure-plaintext --stats --stop
  check submit 2 "${sub[@]}" --insecure-plaintext -p " "
  check submit 2 "${sub[@]}" --insecure-plaintext --prompt-file "$work/missing.txt"
  check submit 2 "${sub[@]}" --insecure-plaintext --prompt-file "$work"
  check submit 2 "${sub[@]}" -p hi  # no keys
  check submit 2 "${sub[@]}" -p hi --key "$keys/c.key"
  check submit 2 "${sub[@]}" -p hi --key "$keys/open.key" --server-key "$keys/d0.pub"
  check submit 2 "${sub[@]}" -p hi --key "$keys/c.key" --server-key "$keys/junk.key"
  check submit 2 "${sub[@]}" -p hi --key "$keys/c.key" --server-key "$keys/d0.pub" --insecure-plaintext
  check submit 2 "$moa" submit --device tcp://10.0.0.1:1 --insecure-plaintext -p hi
  for v in "" bogus "udp://x:1"; do check submit 2 "$moa" submit --device "$v" --insecure-plaintext -p hi; done
  for v in -1 0 nan 1e400 abc; do check submit 2 "${sub[@]}" --insecure-plaintext -p hi --timeout-ms "$v"; done
  check submit 2 "${sub[@]}" --insecure-plaintext -p hi --format xml
}
if [ "$part" != commands ]; then
  if "$moa" device --help >/dev/null 2>&1; then device_cases "$moa"; fi
  # moa_device is moa by another name, with the device's commands only: the cases above hold for
  # it; these check that the name selects those commands and nothing else.
  if [ -n "$moa_device" ]; then
    pd=$((20000 + RANDOM % 20000))
    peers="tcp://127.0.0.1:$pd,tcp://127.0.0.1:$((pd + 1)),tcp://127.0.0.1:$((pd + 2))"
    check moa_device 2 "$moa_device"
    check moa_device 2 "$moa_device" run hi
    check moa_device 2 "$moa_device" submit --device "tcp://127.0.0.1:$pd" -p hi
    check moa_device 2 "$moa_device" device --insecure-plaintext --index 3 --peers "$peers"
    check moa_device 2 "$moa_device" keygen
    check moa_device serving "$moa_device" device --insecure-plaintext --index 0 --peers "$peers"
  fi
  if "$moa" submit --help >/dev/null 2>&1; then submit_cases; fi
fi

# --- report ------------------------------------------------------------------------------------
echo "cases per class:"
for c in $(printf '%s\n' "${!count[@]}" | sort); do printf '  %-20s %5d\n' "$c" "${count[$c]}"; done
printf '  %-20s %5d\n' total "$total"
echo "memory bound: peak RSS ${rss_limit_kb} kB$([ "$use_ulimit" = 1 ] && echo ", ulimit -v ${vmem_limit_kb} kB")"
if [ "$failures" -gt 0 ]; then
  echo "cli_corpus: $failures of $total cases failed"
  exit 1
fi
echo "cli_corpus: all $total cases ended in a documented exit code, within bounds"
