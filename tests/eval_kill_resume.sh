#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `moa eval` killed mid-run (SIGKILL, not a cooperative stop) resumes without losing or redoing an
# item: runs an evaluation of slow synthetic models with results streamed to a JSONL file, kills
# it with kill -9 once the file holds at least one record and before it holds them all, tears the
# last line as a kill inside a write would, reruns the same command, and checks that every
# (layout, item) has exactly one record, that the torn line was reported and its item redone, and
# that the report equals an uninterrupted run's (latency aside: it is measured wall time).
#
#   tests/eval_kill_resume.sh MOA
#
# Pass or fail never depends on the machine's speed: a kill that lands after the run finished
# proves nothing, so the attempt is repeated with slower models (at most 4 times), and the test
# fails rather than passes if no attempt was interrupted.
set -euo pipefail

moa=${1:?usage: eval_kill_resume.sh MOA}
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "eval_kill_resume: FAIL: $*" >&2
  exit 1
}

items=40
layouts=(fast slow)
records=$((items * ${#layouts[@]}))

# Items "What is i + i?" with reference 2i; "fast" answers right for even i, "slow" when 3 | i
# (planted answers, so the scores are known and differ between layouts).
data="$work/data.jsonl"
: >"$data"
for i in $(seq 0 $((items - 1))); do
  printf '{"id": "item%d", "prompt": "What is %d + %d?", "reference": "%d"}\n' \
    "$i" "$i" "$i" $((2 * i)) >>"$data"
done
roster() {  # roster MEAN_LATENCY_MS
  local fast="" slow="" i
  for i in $(seq 0 $((items - 1))); do
    local q="What is $i + $i?" right=$((2 * i)) wrong=$((2 * i + 1))
    fast+="${fast:+, }\"$q\": \"$([ $((i % 2)) = 0 ] && echo $right || echo $wrong)\""
    slow+="${slow:+, }\"$q\": \"$([ $((i % 3)) = 0 ] && echo $right || echo $wrong)\""
  done
  cat <<EOF
{"concurrency_per_endpoint": 2,
 "models": {
   "fast": {"kind": "synthetic", "latency_ms": $1, "price_in_per_mtok": 1, "price_out_per_mtok": 2,
            "answers": {$fast}},
   "slow": {"kind": "synthetic", "latency_ms": $1, "price_in_per_mtok": 3, "price_out_per_mtok": 4,
            "answers": {$slow}}}}
EOF
}
eval_args() {  # eval_args ROSTER RESULTS JSON: the command, in the array "args"
  args=("$moa" eval --roster "$1" --dataset "$data" --score exact --layout fast --layout slow
    --in-flight 2 --bootstrap 200 --seed 5 --results "$2" --json "$3")
}
# The report without what is measured or differs by design between the runs.
summary() { grep -v -E '"(latency_p50_ms|latency_p99_ms|resumed|ran|torn_bytes)"' "$1"; }
lines() { if [ -f "$1" ]; then wc -l <"$1" | tr -d ' '; else echo 0; fi; }

# --- a run killed mid-run ----------------------------------------------------------------------
interrupted=0
latency=40
for attempt in 1 2 3 4; do
  roster "$latency" >"$work/roster.json"
  results="$work/results.jsonl"
  rm -f "$results"
  eval_args "$work/roster.json" "$results" "$work/killed.json"
  # A simple command, not a function: $! is then moa itself, which kill -9 must hit (killing a
  # subshell would leave moa writing on).
  "${args[@]}" >"$work/killed.out" 2>&1 &
  pid=$!
  # Wait (bounded: 3000 x 10 ms) for the header and at least one record, then kill at once.
  for _ in $(seq 3000); do
    [ -f "$results" ] && [ "$(lines "$results")" -ge 2 ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  kill -9 "$pid" 2>/dev/null || true
  status=0
  wait "$pid" 2>/dev/null || status=$?  # no "Killed" job notice
  pid=""
  case "$status" in
    0 | 137) ;;  # finished, or killed by us
    *) fail "moa eval exited $status before the kill: $(head -c 600 "$work/killed.out")" ;;
  esac
  done_records=$(($(lines "$results") - 1))
  if [ "$status" = 137 ] && [ "$done_records" -ge 1 ] && [ "$done_records" -lt "$records" ]; then
    interrupted=1
    break
  fi
  # Finished (or not started) before the kill: inconclusive, never a pass. Slower models.
  echo "attempt $attempt: exit $status with $done_records of $records records, not mid-run;" \
    "retrying with a mean latency of $((latency * 4)) ms"
  latency=$((latency * 4))
done
[ "$interrupted" = 1 ] || fail "no attempt was killed mid-run (inconclusive, so not a pass)"
echo "killed with kill -9 after $done_records of $records records (latency ${latency} ms)"

# A kill inside a write leaves a partial last line; make sure there is one.
printf '{"answers":["' >>"$results"

# --- resume with the same command --------------------------------------------------------------
eval_args "$work/roster.json" "$results" "$work/resumed.json"
"${args[@]}" >"$work/resumed.out" 2>"$work/resumed.err" ||
  fail "the resumed run exited $? ($(cat "$work/resumed.err"))"
grep -q "ended in a torn line" "$work/resumed.err" ||
  fail "the torn last line was not reported: $(cat "$work/resumed.err")"
grep -q '"complete": true' "$work/resumed.json" || fail "the resumed run is not complete"

# Every (layout, item) exactly once, each record a whole line.
[ "$(tail -c 1 "$results" | od -An -c | tr -d ' ')" = '\n' ] || fail "the file ends in a torn line"
[ "$(lines "$results")" = $((records + 1)) ] ||
  fail "$(lines "$results") lines, expected the header and $records records"
[ "$(grep -c '"kind":"header"' "$results")" = 1 ] || fail "not exactly one header"
sed -n 's/.*"item":"\([^"]*\)".*"kind":"answer".*"layout":"\([^"]*\)".*/\2 \1/p' "$results" |
  sort >"$work/keys"
[ "$(wc -l <"$work/keys")" = "$records" ] || fail "$(wc -l <"$work/keys") answer records"
dupes=$(uniq -d "$work/keys")
[ -z "$dupes" ] || fail "records written twice: $dupes"
for l in "${layouts[@]}"; do
  for i in $(seq 0 $((items - 1))); do
    grep -qx "$l item$i" "$work/keys" || fail "no record of $l item$i"
  done
done
resumed=$(sed -n 's/.*"resumed": \([0-9]*\).*/\1/p' "$work/resumed.json")
ran=$(sed -n 's/.*"ran": \([0-9]*\).*/\1/p' "$work/resumed.json")
if [ "$resumed" -lt 1 ] || [ $((resumed + ran)) != "$records" ]; then
  fail "resumed $resumed + ran $ran records, expected $records in all, at least 1 resumed"
fi

# --- the same report as an uninterrupted run ---------------------------------------------------
eval_args "$work/roster.json" "$work/once.jsonl" "$work/once.json"
"${args[@]}" >/dev/null 2>&1 || fail "the uninterrupted run failed"
summary "$work/once.json" >"$work/once.summary"
summary "$work/resumed.json" >"$work/resumed.summary"
diff -u "$work/once.summary" "$work/resumed.summary" >&2 ||
  fail "the resumed report differs from the uninterrupted run's"
grep -q '"items": 40' "$work/once.summary" || fail "the uninterrupted report lacks the items"
echo "eval_kill_resume: passed (resumed $resumed records, ran $ran, report equal)"
