#!/usr/bin/env bash
# fwp-loadtest against a CPU fwp-server: a short sweep completes, its JSON
# holds the percentiles, its counts add up (sent = ok + errors + cut), a level
# bounded in time stops by itself (what runs past its drain is cut, not an
# error), and the PNG plot is written.
set -euo pipefail
server="$1"; loadtest="$2"; model="$3"
. "$(dirname "$0")/server_lib.sh"
start_server "$server" "$model"

"$loadtest" --address "$addr" --levels 1,4 --requests 12 --duration_s 60 \
  --prompt_tokens 4:12 --max_tokens 4:12 --json_out "$dir/sweep.json" --plot_out "$dir/sweep.png" \
  > "$dir/table" || fail "sweep failed"
grep -q "TTFT p50" "$dir/table" || fail "no table"
[ -s "$dir/sweep.png" ] || fail "no plot"

start=$(date +%s.%N)
"$loadtest" --address "$addr" --mode chat --levels 2 --turns 3 --requests 1000 --duration_s 3 \
  --drain_s 0 --prompt_tokens 4:8 --max_tokens 200:400 --json_out "$dir/bounded.json" > /dev/null \
  || fail "bounded run failed"
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
[ "$(echo "$elapsed < 15" | bc)" -eq 1 ] || fail "a 3 s level took ${elapsed}s"

/usr/bin/python3 - "$dir/sweep.json" "$dir/bounded.json" <<'PY'
import json, sys
sweep = json.load(open(sys.argv[1]))
levels = sweep["levels"]
assert [l["concurrency"] for l in levels] == [1, 4], levels
for l in levels:
    assert l["sent"] == 12 and l["ok"] == 12 and l["errors"] == 0 and l["cut"] == 0, l
    for key in ("ttft_s", "itl_s", "tpot_s", "e2e_s"):
        p = l[key]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"], (key, p)
    assert l["output_tokens_per_s"] > 0 and l["request_throughput"] > 0
bounded = json.load(open(sys.argv[2]))["levels"][0]
assert bounded["sent"] == bounded["ok"] + bounded["errors"] + bounded["cut"], bounded
# Turns running at the end (no drain) are cut, not errors.
assert bounded["cut"] >= 1 and bounded["errors"] == 0, bounded
assert bounded["errors"] == sum(bounded["errors_by_code"].values()), bounded
assert bounded["duration_s"] < 10, bounded
print("ok")
PY
