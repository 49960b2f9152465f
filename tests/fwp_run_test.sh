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
# --set writes config fields over the file's: the saved config has them,
# the tokens change with them, and a bad one is refused naming the field.
"$run" --random-init "$dir/config.json" --set n_layers=3 --set update=sum,feature_map=elu1 \
  --save "$dir/set" > /dev/null
grep -q '"n_layers": 3' "$dir/set/config.json" && grep -q '"update": "sum"' "$dir/set/config.json" &&
  grep -q '"kind": "elu1"' "$dir/set/config.json" || { echo "--set not saved:"; cat "$dir/set/config.json"; exit 1; }
d=$("$run" --random-init "$dir/config.json" --set d_model=32 --seed 3 --prompt_ids 1,2,3 --max_tokens 12 --temperature 1 --sample_seed 5)
[ "$a" != "$d" ] || { echo "--set d_model=32 gave the same tokens"; exit 1; }
if out=$("$run" --random-init "$dir/config.json" --set n_layer=3 --prompt_ids 1 2>&1); then
  echo "--set n_layer accepted"; exit 1
fi
grep -q "with --set n_layer=3: unknown config field 'n_layer' (did you mean 'n_layers'?)" <<<"$out" ||
  { echo "--set n_layer: $out"; exit 1; }
if out=$("$run" --model "$dir/model" --set n_layers=3 --prompt_ids 1 2>&1); then
  echo "--set with --model accepted"; exit 1
fi
grep -q -- "--set changes the config of --random-init" <<<"$out" || { echo "--set --model: $out"; exit 1; }
# Sampling flags follow the server's rules, named as flags.
for bad in "temperature nan" "temperature -1" "top_p 0" "top_p 1.5" "top_k -1" "max_tokens 0"; do
  if out=$("$run" --random-init "$dir/config.json" --prompt_ids 1 --${bad% *} ${bad#* } 2>&1); then
    echo "--$bad accepted"; exit 1
  fi
  grep -q -- "--${bad% *} must" <<<"$out" || { echo "--$bad: $out"; exit 1; }
done
# A tokenizer whose vocabulary is not the config's: refused before --save writes.
tokenizer="$(dirname "$0")/../models/default/tokenizer.model"
if out=$("$run" --random-init "$dir/config.json" --tokenizer "$tokenizer" --save "$dir/mismatch" 2>&1); then
  echo "vocab mismatch accepted"; exit 1
fi
grep -q "vocab_size 50" <<<"$out" || { echo "mismatch: $out"; exit 1; }
[ ! -e "$dir/mismatch" ] || { echo "a refused --save wrote $dir/mismatch"; exit 1; }
echo ok
