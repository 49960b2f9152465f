#!/usr/bin/env bash
# The Python client example against a CPU fwp-server: a streaming generate
# (greedy: the same text as fwp-generate) and a two-turn chat loop.
set -euo pipefail
server="$1"; generate="$2"; model="$3"; stubs="$4"; client="$5"
. "$(dirname "$0")/server_lib.sh"
start_server "$server" "$model"
export FWP_PY_STUBS="$stubs"

py=$(/usr/bin/python3 "$client" generate --address "$addr" --prompt "The jury said" \
  --max_tokens 16 2> "$dir/usage")
cc=$("$generate" --address "$addr" --prompt "The jury said" --max_tokens 16 2> /dev/null)
[ -n "$py" ] && [ "$py" = "$cc" ] || fail "python '$py' vs fwp-generate '$cc'"
grep -q "\[length\] 3 prompt + 16 generated" "$dir/usage" || fail "usage: $(cat "$dir/usage")"

out=$(printf 'The jury said\nand the mayor\n' | /usr/bin/python3 "$client" chat --address "$addr" \
  --max_tokens 5)
[ "$(echo "$out" | grep -c '^\[length, 5 tokens')" -eq 2 ] || fail "chat: $out"
seen=$(echo "$out" | sed -n 's/.*session has seen \([0-9]*\)\]/\1/p' | tr '\n' ' ')
set -- $seen
[ "$1" -eq 8 ] && [ "$2" -ge $(( $1 + 5 + 1 )) ] || fail "the session did not carry over: seen $seen"
echo ok
