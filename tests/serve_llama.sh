#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `moa serve` in front of two real llama.cpp servers, driven with curl as an OpenAI client would:
# a non-streamed answer with its trace (a 2-layer MoA over 2 models: 5 calls), a streamed one
# (chat.completion.chunk events ending in [DONE]), a client hanging up mid-run (the run is
# cancelled), then SIGTERM (exit 0). Run under tests/with_llama.sh 2, which sets MOA_ENDPOINTS.
#   tests/serve_llama.sh PATH/TO/moa
set -euo pipefail
moa=$1
IFS=, read -r a b <<< "$MOA_ENDPOINTS"
out=$(mktemp)
"$moa" serve --endpoint "$a" --endpoint "$b" --max-tokens 16 --listen 127.0.0.1:0 > "$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 200); do grep -q 'listening on' "$out" && break; sleep 0.05; done
base=$(grep -o 'http://[0-9.:]*' "$out")
port=${base##*:}
fail() { echo "FAIL: $*"; exit 1; }
echo "serving at $base"

curl -sf "$base/v1/models" | grep -q '"id":"moa"' || fail "/v1/models lists no moa"

body='{"model": "moa", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "moa": {"trace": true}}'
answer=$(curl -sf "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
echo "$answer" | grep -q '"object":"chat.completion"' || fail "not a chat.completion: $answer"
echo "$answer" | grep -Eq '"completion_tokens":[1-9]' || fail "no usage: $answer"
proposers=$(echo "$answer" | grep -o '"role":"proposer"' | wc -l)
aggregators=$(echo "$answer" | grep -o '"role":"aggregator"' | wc -l)
[ "$proposers" = 4 ] && [ "$aggregators" = 1 ] ||
  fail "expected 4 proposer calls and 1 aggregator call, got $proposers and $aggregators"
echo "non-streamed: ok (5 calls traced)"

stream=$(curl -sfN "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "moa", "stream": true, "messages": [{"role": "user", "content": "Say hi."}]}')
events=$(echo "$stream" | grep -c '^data: {.*"object":"chat.completion.chunk"' || true)
[ "$events" -ge 3 ] || fail "expected at least 3 chunks, got $events: $stream"
[ "$(echo "$stream" | grep '^data: ' | tail -n 1)" = "data: [DONE]" ] || fail "no [DONE]: $stream"
echo "streamed: ok ($events chunks, then [DONE])"

# A client that hangs up as soon as the response starts (the header and the role chunk are sent
# when the run starts, long before five model calls end): the server cancels the run.
exec 3<>"/dev/tcp/127.0.0.1/$port"
req='{"model": "moa", "stream": true, "messages": [{"role": "user", "content": "Count to 50."}]}'
printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
  "${#req}" "$req" >&3
read -r status <&3
exec 3>&- 3<&-
echo "hung up after: $status"
for _ in $(seq 200); do
  curl -sf "$base/metrics" | grep -q '^moa_serve_cancelled_total 1$' && break
  sleep 0.05
done
curl -sf "$base/metrics" | grep -q '^moa_serve_cancelled_total 1$' || fail "the run was not cancelled"
for _ in $(seq 200); do curl -sf "$base/metrics" | grep -q '^moa_serve_in_flight 0$' && break; sleep 0.05; done
curl -sf "$base/metrics" | grep -q '^moa_serve_in_flight 0$' || fail "the slot was not given back"
echo "disconnect: the run was cancelled"

kill -TERM "$pid"
wait "$pid" || fail "moa serve exited $? on SIGTERM"
echo "serve_llama: all passed"
