#!/usr/bin/env bash
# fwp-server and fwp-generate as processes: serve, stream (text and JSON
# lines), a refused request, a kept session written to the snapshot dir on
# SIGTERM, and a clear refusal of a missing model.
set -euo pipefail
server="$1"; generate="$2"; model="$3"
. "$(dirname "$0")/server_lib.sh"

if "$server" --model "$dir/nothing" --address 127.0.0.1:0 --metrics_port -1 2> "$dir/err"; then
  fail "a missing model was accepted"
fi
grep -q "nothing" "$dir/err" || fail "the error does not name the model: $(cat "$dir/err")"

start_server "$server" "$model" --snapshot_dir "$dir/snapshots" --grace_s 2

text=$("$generate" --address "$addr" --prompt "The jury said" --max_tokens 12 2> "$dir/usage")
[ -n "$text" ] || fail "no text"
grep -q "\[length\] 3 prompt + 12 generated" "$dir/usage" || fail "usage line: $(cat "$dir/usage")"
again=$("$generate" --address "$addr" --prompt "The jury said" --max_tokens 12 2> /dev/null)
[ "$text" = "$again" ] || fail "greedy is not repeatable: '$text' vs '$again'"

lines=$("$generate" --address "$addr" --prompt "The jury said" --max_tokens 5 --json --logprobs \
  --keep_session 2> "$dir/usage")
# A message carries every token ready when it is written, so the 5 tokens come
# in 1 to 5 lines, each token with its log-probability.
ids=$(echo "$lines" | grep -o '"token_ids":\[[0-9,]*\]' | grep -o '[0-9][0-9]*' | wc -l)
logprobs=$(echo "$lines" | grep -o '"logprob":' | wc -l)
[ "$ids" -eq 5 ] && [ "$logprobs" -eq 5 ] || fail "expected 5 token ids with log-probabilities: $lines"
echo "$lines" | tail -1 | grep -q '"finish_reason":"length"' || fail "last line: $(echo "$lines" | tail -1)"
session=$(echo "$lines" | head -1 | sed -n 's/.*"session_id":"\([0-9a-f]*\)".*/\1/p')
[ ${#session} -eq 32 ] || fail "no session id in: $(echo "$lines" | head -1)"

if "$generate" --address "$addr" --prompt "x" --top_p 1.5 2> "$dir/err"; then
  fail "top_p 1.5 was accepted"
fi
grep -q "INVALID_ARGUMENT: sampling.top_p" "$dir/err" || fail "error: $(cat "$dir/err")"

kill -TERM $pid
wait $pid || fail "server exit status $?"
pid=""
grep -q "stopped" "$dir/log" || fail "no clean stop"
[ -s "$dir/snapshots/$session.fwps" ] || fail "session $session not snapshotted"

# TLS with a self-signed certificate, and bearer tokens.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2> /dev/null
echo "alice alice-token-0123456789" > "$dir/tokens"
start_server "$server" "$model" --tls_cert "$dir/cert.pem" --tls_key "$dir/key.pem" \
  --auth_tokens_file "$dir/tokens"
addr="localhost:${addr#127.0.0.1:}"
tls=$("$generate" --address "$addr" --ca_cert "$dir/cert.pem" --token alice-token-0123456789 \
  --prompt "The jury said" --max_tokens 12 2> /dev/null) || fail "TLS generate failed"
[ "$tls" = "$text" ] || fail "TLS gave other text: '$tls' vs '$text'"
if "$generate" --address "$addr" --ca_cert "$dir/cert.pem" --prompt "x" 2> "$dir/err"; then
  fail "a call without a token was served"
fi
grep -q "UNAUTHENTICATED" "$dir/err" || fail "expected UNAUTHENTICATED: $(cat "$dir/err")"
if "$generate" --address "$addr" --token alice-token-0123456789 --prompt "x" --timeout_s 3 \
  2> /dev/null; then
  fail "a plaintext client reached the TLS server"
fi
echo "ok"
