#!/usr/bin/env bash
# fwp-run end to end: random init, determinism, saving a model directory, and
# a clear error for a bad config.
set -euo pipefail
run="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/config.json" <<'JSON'
{"vocab_size": 50, "d_model": 16, "n_layers": 2, "n_heads": 2, "d_head": 8,
 "d_ff": 32, "update": "delta", "feature_map": {"kind": "dpfp", "nu": 1}}
JSON
a=$("$run" --random-init "$dir/config.json" --seed 3 --prompt_ids 1,2,3 --max_tokens 12 --temperature 1 --sample_seed 5)
b=$("$run" --random-init "$dir/config.json" --seed 3 --prompt_ids 1,2,3 --max_tokens 12 --temperature 1 --sample_seed 5)
[ "$a" = "$b" ] || { echo "not deterministic: '$a' vs '$b'"; exit 1; }
[ "$(echo "$a" | wc -w)" -eq 12 ] || { echo "expected 12 tokens, got '$a'"; exit 1; }
for t in $a; do [ "$t" -ge 0 ] && [ "$t" -lt 50 ] || { echo "bad token $t"; exit 1; }; done
c=$("$run" --random-init "$dir/config.json" --seed 4 --prompt_ids 1,2,3 --max_tokens 12 --temperature 1 --sample_seed 5)
[ "$a" != "$c" ] || { echo "another seed gave the same tokens"; exit 1; }
"$run" --random-init "$dir/config.json" --save "$dir/model" > /dev/null
[ -s "$dir/model/config.json" ] && [ -s "$dir/model/model.safetensors" ]
echo '{"vocab_size": 50, "d_modle": 16}' > "$dir/bad.json"
if out=$("$run" --random-init "$dir/bad.json" --prompt_ids 1 2>&1); then
  echo "bad config accepted"; exit 1
fi
echo "$out" | grep -q "d_modle" || { echo "error does not name the field: $out"; exit 1; }
echo ok
