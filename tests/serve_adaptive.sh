#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `moa serve --adaptive` end to end with the embedded synthetic models, driven with curl
# (docs/ADAPTIVE.md, "moa serve"). Deterministic whatever the machine's speed: every model is
# believed to take an hour a call (--prior-service 3600) and the estimates are taken as they are
# (--confidence-z 0, --warmup-prompts 0), so the first request (no rate seen yet) runs the largest
# layout and the second, whenever it comes, is refused: 429 over_capacity with Retry-After, and
# nothing runs. Then /metrics counts both, and SIGTERM exits 0. Then the options from a roster
# layout's "adaptive" object, a flag beating one of them.
#   tests/serve_adaptive.sh PATH/TO/moa
set -euo pipefail
moa=$1
out=$(mktemp)
hdr=$(mktemp)
"$moa" serve --adaptive --prior-service 3600 --confidence-z 0 --warmup-prompts 0 \
  --listen 127.0.0.1:0 > "$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out" "$hdr"' EXIT
for _ in $(seq 200); do grep -q 'listening on' "$out" && break; sleep 0.05; done
base=$(grep -o 'http://[0-9.:]*' "$out")
fail() { echo "FAIL: $*"; exit 1; }
echo "serving at $base"
body='{"model": "moa", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "moa": {"trace": true}}'

first=$(curl -s -o - -w '\n%{http_code}' "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
[ "$(echo "$first" | tail -n 1)" = 200 ] || fail "the first request was not answered: $first"
echo "$first" | grep -q '"adaptive":{"admitted":true,' || fail "no adaptive decision in the trace: $first"
echo "$first" | grep -q '"fanout":2,"layers":2,' || fail "not the largest layout (2x2): $first"
echo "first: 200 at M=2 k=2"

second=$(curl -s -D "$hdr" -o - -w '\n%{http_code}' "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
[ "$(echo "$second" | tail -n 1)" = 429 ] || fail "the second request was not refused: $second"
echo "$second" | grep -q '"code":"over_capacity"' || fail "no over_capacity code: $second"
retry=$(grep -i '^retry-after:' "$hdr" | tr -dc 0-9)
[ -n "$retry" ] && [ "$retry" -ge 1 ] || fail "no Retry-After of at least 1 s: $(cat "$hdr")"
echo "$second" | grep -q '"trace"' && fail "the refused request ran: $second"
echo "second: 429 over_capacity, Retry-After: $retry"

metrics=$(curl -sf "$base/metrics")
echo "$metrics" | grep -q '^moa_serve_adaptive_prompts_total{model="moa",layers="2",fanout="2"} 1$' ||
  fail "prompts per layout not counted: $metrics"
echo "$metrics" | grep -q '^moa_serve_adaptive_refused_total{model="moa"} 1$' ||
  fail "the refusal not counted: $metrics"
echo "metrics: 1 admitted at 2x2, 1 refused"

kill -TERM "$pid"
wait "$pid" || fail "moa serve exited $? on SIGTERM"

# The options from a roster layout's "adaptive" object, a flag beating one of them: the layout is
# served adaptively without --adaptive, with the roster's allowed layouts and the flag's target.
roster=$(mktemp)
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out" "$hdr" "$roster"' EXIT
cat > "$roster" <<'JSON'
{"models": {"a": {"kind": "synthetic"}, "b": {"kind": "synthetic"}},
 "layouts": {"l": {"layers": [["a", "b"]], "aggregator": "a",
                   "adaptive": {"layouts": "1x1,1x0", "target": 0.7, "rate-window": 30}}}}
JSON
: > "$out"
"$moa" serve --roster "$roster" --target 0.75 --listen 127.0.0.1:0 > "$out" &
pid=$!
for _ in $(seq 200); do grep -q 'listening on' "$out" && break; sleep 0.05; done
base=$(grep -o 'http://[0-9.:]*' "$out")
third=$(curl -sf "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "l", "messages": [{"role": "user", "content": "Hi"}], "moa": {"trace": true}}')
echo "$third" | grep -q '"fanout":1,"layers":1,' || fail "not the roster's best layout (1x1): $third"
echo "$third" | grep -q '"target":0.75,' || fail "the --target flag did not win: $third"
metrics=$(curl -sf "$base/metrics")
echo "$metrics" | grep -q '^moa_serve_adaptive_prompts_total{model="l",layers="1",fanout="1"} 1$' ||
  fail "prompts per layout not counted: $metrics"
echo "$metrics" | grep -q 'layers="2"' && fail "a layout the roster does not allow: $metrics"
echo "roster: 200 at M=1 k=1, target 0.75 from the flag"
kill -TERM "$pid"
wait "$pid" || fail "moa serve exited $? on SIGTERM"
echo "serve_adaptive: all passed"
