#!/usr/bin/env bash
# Every program's --help names its own flags (absl's default shows none of
# ours), a dashed flag name parses like the underscored one, and the offline
# tools refuse bad flags and inputs with a message naming them (rc 1, no abort).
set -euo pipefail
bin=$(cd "$1" && pwd)
check() {  # program, a flag it defines
  local out
  out=$("$bin/$1" --help 2>&1 || true)
  if ! grep -q -- "--$2 " <<<"$out"; then
    echo "$1 --help does not list --$2:"; echo "$out" | head -20; exit 1
  fi
}
check fwp-server slots
check fwp-server http_port
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

root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
refuses() {  # text the message must hold, then the command
  local want=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if [ "$rc" -ne 1 ] || ! grep -qF -- "$want" <<<"$out"; then
    echo "expected rc 1 and '$want' from: $*"; echo "got rc $rc:"; echo "$out" | tail -5; exit 1
  fi
}
# A tiny prepared data dir: token files written by hand (train/token_file.h).
tokfile() {  # path, token count; tokens i mod 50, vocabulary 8192
  local n=$2 i
  {
    printf 'FWPTOK01'
    for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(( (n >> (8 * i)) & 255 )))"; done
    printf '\x00\x20\x00\x00\x00\x00\x00\x00'
    for ((i = 0; i < n; ++i)); do printf "\\x$(printf %02x $((i % 50)))\\x00\\x00\\x00"; done
  } > "$1"
}
mkdir "$dir/data"
tokfile "$dir/data/train.tok" 400
tokfile "$dir/data/valid.tok" 100
tokfile "$dir/data/test.tok" 1
cp "$root/models/default/tokenizer.model" "$dir/data/"
echo '{"test": {"bytes": 10}, "valid": {"bytes": "many"}}' > "$dir/data/stats.json"
cat > "$dir/tiny.json" <<'JSON'
{"vocab_size": 8192, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_head": 8,
 "d_ff": 32, "update": "delta", "feature_map": {"kind": "dpfp", "nu": 1}}
JSON
train=("$bin/fwp-train" --backend cpu --config "$dir/tiny.json" --data "$dir/data" --batch 2
       --seq 8 --eval_windows 2 --eval_every 0 --warmup 0)
touch "$dir/afile"
refuses "cannot create $dir/afile/sub" "${train[@]}" --out "$dir/afile/sub"
refuses "cannot create $dir/afile" "${train[@]}" --out "$dir/afile"
# fwp-prepare on your own text: 40 documents apart by blank lines.
words=(the jury said city of atlanta election produced no evidence that any irregularities
       took place further in term end presentments grand charge over deserves praise)
for ((d = 0; d < 40; ++d)); do
  for ((l = 0; l < 6; ++l)); do
    line=""
    for ((w = 0; w < 12; ++w)); do line+="${words[(d * 7 + l * 5 + w * w) % ${#words[@]}]} "; done
    echo "$line$d."
  done
  echo
done > "$dir/corpus.txt"
refuses "--out: cannot create $dir/afile/sub" "$bin/fwp-prepare" --text "$dir/corpus.txt" --out "$dir/afile/sub"
"$bin/fwp-prepare" --text "$dir/corpus.txt" --out "$dir/mine" --vocab 400 > /dev/null
grep -q '"documents": 36' "$dir/mine/stats.json" && grep -q '"vocab_size": 400' "$dir/mine/stats.json" ||
  { echo "fwp-prepare --text:"; cat "$dir/mine/stats.json"; exit 1; }
[ -s "$dir/mine/train.tok" ] && [ -s "$dir/mine/valid.tok" ] && [ -s "$dir/mine/test.tok" ]
"$bin/fwp-prepare" --text "$dir/mine/train.txt" --out "$dir/again" --vocab 400 > /dev/null  # train.txt reads back
grep -q '"documents": 34' "$dir/again/stats.json" || { echo "train.txt as --text:"; cat "$dir/again/stats.json"; exit 1; }
"$bin/fwp-prepare" --text "$dir/corpus.txt" --out "$dir/mine2" --tokenizer "$root/models/default/tokenizer.model" > /dev/null
cmp -s "$dir/mine2/tokenizer.model" "$root/models/default/tokenizer.model" || { echo "--tokenizer not copied"; exit 1; }
head -30 "$dir/corpus.txt" > "$dir/short.txt"
refuses "holds 5 documents" "$bin/fwp-prepare" --text "$dir/short.txt" --out "$dir/x"
refuses "neither a file nor a directory" "$bin/fwp-prepare" --text "$dir/none" --out "$dir/x"
refuses "$dir/afile" "$bin/fwp-prepare" --text "$dir/corpus.txt" --tokenizer "$dir/afile" --out "$dir/x"
refuses "--text and --corpus are two corpora" "$bin/fwp-prepare" --text "$dir/corpus.txt" --corpus "$dir" --out "$dir/x"
refuses "--tokenizer's has its own" "$bin/fwp-prepare" --text "$dir/corpus.txt" --vocab 300 \
  --tokenizer "$root/models/default/tokenizer.model" --out "$dir/x"
refuses "training the tokenizer (--vocab 100000)" "$bin/fwp-prepare" --text "$dir/corpus.txt" --out "$dir/v" --vocab 100000
refuses "--lr must be" "${train[@]}" --out "$dir/x" --lr nan
refuses "--min_lr_ratio" "${train[@]}" --out "$dir/x" --min_lr_ratio 1.5
refuses "--warmup" "${train[@]}" --out "$dir/x" --warmup -1
refuses "--clip" "${train[@]}" --out "$dir/x" --clip inf
refuses "--weight_decay" "${train[@]}" --out "$dir/x" --weight_decay -1
refuses "--steps" "${train[@]}" --out "$dir/x" --steps -2
refuses "--batch × --seq" "${train[@]}" --out "$dir/x" --batch 100000 --seq 100000
refuses "--accum must be in" "${train[@]}" --out "$dir/x" --accum 0
refuses "--batch" "${train[@]}" --out "$dir/x" --batch 4611686018427387904 --seq 4
refuses "loss is not finite at step" "${train[@]}" --out "$dir/nan" --lr 1e30 --clip 0 --steps 20
out=$("${train[@]}" --out "$dir/set" --steps 2 --accum 2 --set n_layers=2,feature_map=elu1 --set d_ff=24)
grep -q "for 2 steps of 4 sequences (2 passes of 2)" <<<"$out" || { echo "accum not reported: $out"; exit 1; }
grep -q '"n_layers": 2' "$dir/set/config.json" && grep -q '"d_ff": 24' "$dir/set/config.json" &&
  grep -q '"kind": "elu1"' "$dir/set/config.json" || { echo "--set not in the run:"; cat "$dir/set/config.json"; exit 1; }
refuses "with --set d_ff=0: config field 'd_ff' must be in" "${train[@]}" --out "$dir/x" --set d_ff=0
refuses "with --set n_layers=0,d_ff=0" "${train[@]}" --out "$dir/x" -set n_layers=0 -set=d_ff=0  # one dash too
echo "--set=n_layers=0" > "$dir/flags"
refuses "--set is given where it cannot be read" "${train[@]}" --out "$dir/x" --flagfile "$dir/flags"
mkdir "$dir/notok" && cp "$dir/data/"*.tok "$dir/notok/"
refuses "has no tokenizer.model" "${train[@]}" --data "$dir/notok" --out "$dir/x"
[ ! -e "$dir/x" ] || { echo "a refused run created its --out"; exit 1; }
# Fine-tuning: --init's config and weights, --data tokenized by its tokenizer.
out=$("$bin/fwp-train" --backend cpu --init "$root/models/default" --data "$dir/mine2" --out "$dir/ft" \
      --steps 1 --batch 2 --seq 8 --eval_windows 1 --warmup 0 --lr 1e-4)
grep -q "fine-tuning 5256704 parameters from $root/models/default" <<<"$out" || { echo "--init: $out"; exit 1; }
cmp -s "$dir/ft/config.json" "$root/models/default/config.json" || { echo "--init's config not kept"; exit 1; }
refuses "--eval_context must be auto, window or stream" "${train[@]}" --out "$dir/x" --eval_context long
out=$("${train[@]}" --out "$dir/carry" --steps 1 --carry_state)
grep -q "valid stream" <<<"$out" && grep -q '"eval_context": "stream"' "$dir/carry/trainer.json" ||
  { echo "carry_state's evaluation is not a stream: $out"; exit 1; }
out=$("${train[@]}" --out "$dir/best" --steps 2 --eval_every 1 --keep_best)
grep -q "valid windows" <<<"$out" || { echo "windows evaluation: $out"; exit 1; }
grep -q "step 1 .*best so far: saved to best/" <<<"$out" && [ -s "$dir/best/best/model.safetensors" ] ||
  { echo "--keep_best: $out"; ls "$dir/best"; exit 1; }
ft=("$bin/fwp-train" --backend cpu --init "$root/models/default" --steps 1 --batch 2 --seq 8 --out "$dir/x")
refuses "was tokenized otherwise than --init" "${ft[@]}" --data "$dir/mine"
refuses "drop --config" "${ft[@]}" --data "$dir/mine2" --config "$dir/tiny.json"
refuses "--set cannot change --init's config" "${ft[@]}" --data "$dir/mine2" --set n_layers=2
refuses "--resume continues the run" "$bin/fwp-train" --backend cpu --init "$root/models/default" --out "$dir/ft" --resume
refuses "model directory $dir/none does not exist" "$bin/fwp-train" --backend cpu --init "$dir/none" --data "$dir/data" --out "$dir/x"
refuses "a new run needs --config, or --init" "$bin/fwp-train" --backend cpu --data "$dir/data" --out "$dir/x"
# Resume: the run's own steps by default, log rows past the checkpoint cut,
# fixed settings refused, a finished run said to be so.
"${train[@]}" --out "$dir/run" --steps 4 --checkpoint_every 2 > /dev/null
refuses "holds a run at step 4" "${train[@]}" --out "$dir/run" --steps 4
resume=("$bin/fwp-train" --backend cpu --data "$dir/data" --out "$dir/run" --resume)
refuses "nothing to do" "${resume[@]}"
refuses "nothing to do" "${resume[@]}" --steps 3
for flag in "lr 0.5" "batch 4" "seq 4" "warmup 1" "seed 2" "min_lr_ratio 0.5" "weight_decay 0" \
            "clip 0" "carry_state" "config $dir/tiny.json" "set n_layers=2" "accum 2" "keep_best" "eval_context window" \
            "eval_every 3" "eval_windows 1" "checkpoint_every 1"; do
  refuses "--${flag%% *} cannot change on --resume" "${resume[@]}" --steps 6 --$flag
done
refuses "--data cannot change on --resume: $dir/run runs with data $dir/data" \
  "$bin/fwp-train" --backend cpu --data "$dir/mine2" --out "$dir/run" --resume --steps 6
echo "5,0,0,0,0,-1,-1" >> "$dir/run/log.csv"  # a row logged after the last checkpoint
out=$("${resume[@]}" --steps 6)
grep -q "final rate" <<<"$out" || { echo "extension's rate not reported: $out"; exit 1; }
[ "$(cut -d, -f1 "$dir/run/log.csv" | tr '\n' ' ')" = "step 1 2 3 4 5 6 " ] ||
  { echo "log.csv after resume:"; cat "$dir/run/log.csv"; exit 1; }
grep -q '"steps": 6' "$dir/run/trainer.json" || { echo "trainer.json not at 6 steps"; exit 1; }
# A 6-step run stopped at step 4 (as if killed): a plain --resume finishes it.
"${train[@]}" --out "$dir/run2" --steps 4 > /dev/null
sed -i 's/"steps": 4/"steps": 6/' "$dir/run2/trainer.json"
# Without --data, from a directory with no data/brown: the run's own data.
out=$(cd "$dir/notok" && "$bin/fwp-train" --backend cpu --out "$dir/run2" --resume)
grep -q "at step 4 of 6 on cpu, data $dir/data" <<<"$out" || { echo "plain resume: $out"; exit 1; }
grep -q '"step": 6' "$dir/run2/trainer.json" || { echo "plain resume did not reach 6"; exit 1; }
# Data moved: --data names its new place; prepared again with another
# tokenizer, it is refused.
cp -r "$dir/data" "$dir/data2"
"${train[@]}" --data "$dir/data2" --out "$dir/run3" --steps 2 --checkpoint_every 1 > /dev/null
sed -i 's/"steps": 2/"steps": 4/' "$dir/run3/trainer.json"
mv "$dir/data2" "$dir/data3"
refuses "runs with data $dir/data2, which is gone: --data names its new place" \
  "$bin/fwp-train" --backend cpu --out "$dir/run3" --resume
cp "$dir/mine/tokenizer.model" "$dir/data3/"
refuses "--data $dir/data3 is no longer tokenized as $dir/run3 was trained" \
  "$bin/fwp-train" --backend cpu --data "$dir/data3" --out "$dir/run3" --resume
cp "$dir/data/tokenizer.model" "$dir/data3/"
out=$("$bin/fwp-train" --backend cpu --data "$dir/data3" --out "$dir/run3" --resume)
grep -q "data $dir/data3" <<<"$out" && grep -q "\"data\": \"$dir/data3\"" "$dir/run3/trainer.json" ||
  { echo "moved data: $out"; cat "$dir/run3/trainer.json"; exit 1; }
# SIGTERM (a preempted job): said at once, the run stops after its step,
# checkpointed, and ends by the signal (143); --resume then gives the
# uninterrupted run's log (to its printed digits; Trainer.AStoppedRun... checks
# the bits). 2000 steps take seconds, so the signal lands mid-run.
long=("${train[@]}" --steps 2000 --checkpoint_every 100000 --eval_every 0)
"${long[@]}" --out "$dir/whole" > /dev/null
"${long[@]}" --out "$dir/term" > "$dir/term.out" 2>&1 &
pid=$!
for _ in $(seq 1 400); do
  [ "$(cat "$dir/term/log.csv" 2>/dev/null | wc -l)" -gt 3 ] || ! kill -0 $pid 2>/dev/null && break
  sleep 0.05
done
kill -TERM $pid 2>/dev/null || true
rc=0; wait $pid || rc=$?
[ "$rc" -eq 143 ] && grep -q "stopping after this step" "$dir/term.out" &&
  grep -q -- "SIGTERM: stopped at step .* --resume continues it" "$dir/term.out" ||
  { echo "SIGTERM: rc $rc"; cat "$dir/term.out"; exit 1; }
step=$(grep -o '"step": [0-9]*' "$dir/term/trainer.json" | grep -o '[0-9]*$')
[ "$step" = "$(tail -1 "$dir/term/log.csv" | cut -d, -f1)" ] && [ "$step" -lt 2000 ] ||
  { echo "checkpoint at $step, log:"; tail -2 "$dir/term/log.csv"; exit 1; }
"$bin/fwp-train" --backend cpu --data "$dir/data" --out "$dir/term" --resume > /dev/null
cmp <(cut -d, -f1,3,4 "$dir/whole/log.csv") <(cut -d, -f1,3,4 "$dir/term/log.csv") ||
  { echo "resumed after SIGTERM differs from the uninterrupted run"; exit 1; }
# fwp-eval on the run above: bad flags, too-short splits, bad stats.json.
eval=("$bin/fwp-eval" --backend cpu --model "$dir/run" --data "$dir/data")
refuses "--seq" "${eval[@]}" --seq 0
refuses "--seq" "${eval[@]}" --seq -5
refuses "--batch" "${eval[@]}" --batch -1
refuses "fewer than" "${eval[@]}" --split test --seq 8 --context window
refuses "fewer than" "${eval[@]}" --split test --context stream
refuses "fewer than" "${eval[@]}" --split train --seq 100000
refuses "--split must be" "${eval[@]}" --split ../data/valid
refuses "--data $dir/mine was tokenized otherwise than --model $dir/run" "${eval[@]}" --data "$dir/mine" --split test
refuses "stats.json: field 'valid.bytes'" "${eval[@]}" --seq 8
echo '{"valid": 5}' > "$dir/data/stats.json"
refuses "stats.json: field 'valid.bytes'" "${eval[@]}" --seq 8
echo '{"valid": {"bytes": 0}}' > "$dir/data/stats.json"
refuses "stats.json: field 'valid.bytes'" "${eval[@]}" --seq 8
echo '{"valid": {"bytes": 1000}}' > "$dir/data/stats.json"
"${eval[@]}" --seq 8 | grep -q "bits/byte" || { echo "fwp-eval gave no bits/byte"; exit 1; }
# fwp-retrieval's range and sizes.
ret=("$bin/fwp-retrieval" --backend cpu --max_steps 1 --eval_every 1 --batch 2)
refuses "--by" "${ret[@]}" --from 4 --to 8 --by 0
refuses "--by" "${ret[@]}" --from 4 --to 8 --by -2
refuses "--to" "${ret[@]}" --from 8 --to 4
refuses "--from" "${ret[@]}" --from 100000000 --to 100000000
for nu in 0 -3 100000; do refuses "--nu" "${ret[@]}" --from 4 --to 4 --nu $nu; done
for lr in nan 0 -1; do refuses "--lr" "${ret[@]}" --from 4 --to 4 --lr $lr; done
refuses "--csv" "${ret[@]}" --from 4 --to 4 --csv "$dir/afile/results.csv"
echo ok
