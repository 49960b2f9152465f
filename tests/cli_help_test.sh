#!/usr/bin/env bash
# Every program's --help names its own flags (absl's default shows none of
# ours), and a dashed flag name parses like the underscored one.
set -euo pipefail
bin=$1
check() {  # program, a flag it defines
  local out
  out=$("$bin/$1" --help 2>&1 || true)
  if ! grep -q -- "--$2 " <<<"$out"; then
    echo "$1 --help does not list --$2:"; echo "$out" | head -20; exit 1
  fi
}
check fwp-server slots
check fwp-train steps
check fwp-eval split
check fwp-prepare vocab
check fwp-retrieval max_steps
check fwp-run random_init
check fwp-generate max_tokens
check fwp-chat address
check fwp-health address
check fwp-loadtest levels
check fwp-bench-cpu seconds
check fwp-bench-server levels
# --eval-every is --eval_every.
out=$("$bin/fwp-retrieval" --max-steps 2 --eval-every 1 --from 4 --to 4 --batch 2 2>&1)
grep -Eq '^delta\+dpfp1 +1 +4 +2 ' <<<"$out" || { echo "dashed flags not applied:"; echo "$out"; exit 1; }
echo ok
