#!/usr/bin/env bash
# The GPU tests and figures the CUDA backend and the trainer owe.
#
#   here (build machine):  bench/gpu_check.sh pack
#   device, one call:      bash bench/gpu_check.sh all     (carry .devpack.tar.xz and data/brown;
#                                                          timeout_s 560)
#   or one part a call:    bash bench/gpu_check.sh tests|sanitize|bench|train|retrieval 1|2
#
# A session is lent 15 minutes of device time, the machine's start and the
# transfers included, so `all` runs everything in one call: the parts in order
# of what they decide (the GPU tests first, then the benchmarks, training, the
# sanitizers, and the paper's retrieval points with whatever time is left),
# each cut to the time left before its deadline (ALL_SECONDS, default 450 s for `all`, 570 s for one part).
#
# `pack` builds and copies the programs with their libraries (and the
# SentencePiece plugin, which is loaded from beside them) into .devpack, and
# packs that into .devpack.tar.xz (16 MB, where .devpack is 94 MB; the device
# tool carries 64 MiB at most, tracked tree included: the tree's 23 MB, the
# archive and data/brown's 12 MB fit, where gzip's 32 MB archive no longer
# did). Each device stage unpacks it when .devpack is not
# there yet and finds the CUDA libraries that devpack leaves to the device
# (cudart, cuBLAS) if the loader does not. Logs go to a work folder
# (GPU_CHECK_WORK, default /tmp/gpu-check); since the tool brings back at most
# 8 files, $OUT (or ./gpu-out without one) gets summary.txt (also printed at
# the end), logs.tar.gz (every log, CSV and the runs' log.csv, no weights) and
# retrieval.csv. On a fault, rerun the failing filter with
# CUDA_LAUNCH_BLOCKING=1: the launch check then names the kernel.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-}
out=${OUT:-gpu-out}
work=${GPU_CHECK_WORK:-/tmp/gpu-check}
mkdir -p "$out"
export LD_LIBRARY_PATH=.devpack/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=.devpack/bin
if [ "$stage" != pack ] && [ ! -d .devpack ] && [ -f .devpack.tar.xz ]; then
  # (Python's lzma where the device has no xz.)
  mkdir -p .devpack && { tar -C .devpack -xJf .devpack.tar.xz 2>/dev/null ||
    python3 -c 'import tarfile; tarfile.open(".devpack.tar.xz").extractall(".devpack")'; }
fi
if [ "$stage" != pack ] && [ -x "$bin/fwp-tests" ]; then
  # The programs' runpath is the build machine's CUDA folder; the device's
  # toolkit (or PyTorch's CUDA wheels) may keep its libraries elsewhere.
  for lib in $(ldd "$bin/fwp-tests" | awk '/not found/ {print $1}'); do
    found=$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" 2>/dev/null | head -n 1)
    [ -n "$found" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$found")
  done
  if ldd "$bin/fwp-tests" | grep 'not found'; then
    echo "gpu_check: the libraries above are not on this machine" | tee "$out/missing-libraries.txt"
    exit 3
  fi
fi

# `all` leaves a 560-s call's last 110 s for packing and what overruns; one part
# alone has a 600-s call to itself.
[ "$stage" = all ] && seconds=${ALL_SECONDS:-450} || seconds=${ALL_SECONDS:-570}
deadline=$seconds  # from the script's start: unpacking counts
worst=0
summary=$work/summary.txt
# part NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS (fewer when
# the deadline is nearer; not at all under 15 s), its output in $work/NAME.txt.
part() {
  local name=$1 want=$2 left=$((deadline - SECONDS))
  shift 2
  if ((left < 15)); then
    echo "$name: not run, ${left} s left" | tee -a "$summary"
    worst=$((worst > 1 ? worst : 1))
    return 1
  fi
  local cap=$((want < left ? want : left)) start=$SECONDS rc
  timeout -k 5 "$cap" "$@" > "$work/$name.txt" 2>&1
  rc=$?
  ((rc > worst)) && worst=$rc
  echo "$name: rc $rc, $((SECONDS - start)) s (cap $cap s)$( ((rc == 124 || rc == 137)) && echo ', TIMED OUT')" \
    | tee -a "$summary"
  return $rc
}
# note TEXT...: a line of the summary.
note() { echo "$*" | tee -a "$summary"; }
# counts LOG: a gtest run's totals and the names of its failed tests.
counts() {
  grep -E '^\[  (PASSED|SKIPPED|FAILED) +\] [0-9]+ tests?' "$1" | tee -a "$summary"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$1" | sed 's/ ([0-9]* ms)$//' | sort -u | tee -a "$summary"
}

tests() {
  nvidia-smi > "$work/gpu.txt" 2>&1
  note "$(grep -m 1 -o 'NVIDIA [A-Z0-9]*[^|]*' "$work/gpu.txt" | head -n 1)"
  # The CUDA half of the suite: every op against the CPU, the decode step,
  # the whole model, the sampler, training on the GPU.
  part tests 200 "$bin/fwp-tests" --gtest_filter='CudaOps*:Device*:*Gpu*'
  counts "$work/tests.txt"
  # A backend that cannot start skips every GPU test, and gtest calls that a pass.
  if grep -q '^\[  SKIPPED \]' "$work/tests.txt"; then
    note "gpu_check: GPU TESTS SKIPPED (no usable device?):"
    grep -m 1 -A2 '^\[ RUN' "$work/tests.txt" | tee -a "$summary"
  fi
  # fwp-server's own suite with the CUDA backend: batching exactness, the
  # host and disk tiers, the GPU sampler among host-drawn rows.
  part server-tests 150 env FWP_TEST_BACKEND=cuda "$bin/fwp-tests" --gtest_filter='Server*'
  counts "$work/server-tests.txt"
  # Without a device the whole binary skips at its set-up (one message, and
  # gtest still counts the tests as passed).
  if grep -q ': Skipped$' "$work/server-tests.txt"; then
    note "gpu_check: SERVER TESTS SKIPPED: $(grep -m 1 -A1 ': Skipped$' "$work/server-tests.txt" | tail -n 1)"
  fi
}

bench() {
  part bench-gpu 150 "$bin/fwp-bench-gpu" --seconds 0.5
  cat "$work/bench-gpu.txt" >> "$summary"
  part bench-server 120 "$bin/fwp-bench-server" --backend cuda --model models/default \
    --levels 1,16,64,256 --tokens 128
  tail -n 12 "$work/bench-server.txt" >> "$summary"
  # Chat-like streams (fwp-chat's defaults): sampled, penalties on the device.
  part bench-server-chat 90 "$bin/fwp-bench-server" --backend cuda --model models/default \
    --levels 16,256 --tokens 64 --temperature 0.8 --top_p 0.95 --repetition_penalty 1.1
  tail -n 3 "$work/bench-server-chat.txt" >> "$summary"
}

bench_cublas() {
  part bench-gpu-cublas 90 "$bin/fwp-bench-gpu" --seconds 0.5 --batch_invariant=false
  grep -A7 '^decode' "$work/bench-gpu-cublas.txt" >> "$summary"
}

train() {
  # fwp-train's own tokens/s on the GPU (the default model's recipe, 300 steps).
  rm -rf "$work/train-run" "$work"/accum-*  # a rerun on a warm machine starts afresh
  part train 120 "$bin/fwp-train" --config models/default.json --data data/brown \
    --backend cuda --out "$work/train-run" --steps 300 --eval_every 100 --eval_windows 64 \
    --checkpoint_every 1000
  tail -n 6 "$work/train.txt" >> "$summary"
  # Gradient accumulation and stream evaluation on the GPU against the CPU:
  # the same 20 carried steps (4 passes of 4 streams), losses side by side.
  for backend in cuda cpu; do
    part "accum-$backend" 90 "$bin/fwp-train" --config models/default.json --data data/brown \
      --backend "$backend" --out "$work/accum-$backend" --steps 20 --batch 4 --accum 4 \
      --carry_state --eval_every 10 --eval_windows 40 --checkpoint_every 1000
  done
  if [ -f "$work/accum-cuda/log.csv" ] && [ -f "$work/accum-cpu/log.csv" ]; then
    paste -d, <(cut -d, -f1,3,6 "$work/accum-cuda/log.csv") <(cut -d, -f3,6 "$work/accum-cpu/log.csv") \
      > "$work/accum.csv"
    note "accum: step,loss,valid (cuda) | loss,valid (cpu)"; tail -n 3 "$work/accum.csv" >> "$summary"
  fi
  # The shipped model's perplexity on the GPU (the CPU measures 242.97 window,
  # 224.79 stream on the test split).
  for context in window stream; do
    part "eval-$context" 60 "$bin/fwp-eval" --backend cuda --model models/default --data data/brown \
      --split test --context "$context"
    tail -n 1 "$work/eval-$context.txt" >> "$summary"
  done
}

sanitize() {
  # compute-sanitizer (where the runtime allows it: Firecracker, not gVisor)
  # over the hand-written kernels on small cases: out-of-bounds accesses,
  # then shared-memory races in the fast-weight and sampler kernels.
  local sanitizer filter
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  filter='CudaOps.FastWeight*:CudaOps.SampleRows*:CudaOps.Penalt*:CudaOps.Embedding*:CudaOps.LayerNorm*:CudaOps.Feature*'
  part memcheck "${1:-300}" "$sanitizer" --tool memcheck --error-exitcode 9 "$bin/fwp-tests" \
    --gtest_filter="$filter"
  tail -n 3 "$work/memcheck.txt" >> "$summary"
  part racecheck "${2:-240}" "$sanitizer" --tool racecheck --error-exitcode 9 "$bin/fwp-tests" \
    --gtest_filter='CudaOps.FastWeightStates*:CudaOps.SampleRows*'
  tail -n 3 "$work/racecheck.txt" >> "$summary"
}

retrieval() {
  # The paper's synthetic experiments at the points that decide its figures
  # (around each memory's capacity), its 100k-step budget capped by time:
  # points are setting:update:phi:nu:S; the CUDA kernels split d_value = S over
  # column tiles, so every S of the paper runs.
  local points=$1 seconds=$2 point setting rule phi nu S
  for point in $points; do
    IFS=: read -r setting rule phi nu S <<<"$point"
    part "retrieval-$setting-$rule-$phi$nu-$S" $((seconds + 30)) "$bin/fwp-retrieval" --backend cuda \
      --setting "$setting" --update "$rule" --phi "$phi" --nu "$nu" --from "$S" --to "$S" \
      --max_seconds "$seconds" --csv "$work/retrieval.csv" || true
    tail -n 2 "$work/retrieval-$setting-$rule-$phi$nu-$S.txt" >> "$summary"
  done
}
setting1="1:sum:elu1:1:60 1:sum:elu1:1:100 1:sum:dpfp:1:100 1:sum:dpfp:1:160
          1:sum:dpfp:2:240 1:sum:dpfp:2:300 1:sum:dpfp:3:340 1:sum:dpfp:3:440 1:sum:dpfp:3:600"
setting2="2:sum:dpfp:1:20 2:sum:dpfp:2:60 2:delta:elu1:1:60 2:delta:dpfp:1:100
          2:delta:dpfp:1:140 2:delta:dpfp:2:200"

# finish: $out gets the summary, one archive of the logs and the retrieval CSV.
finish() {
  tar -C "$work" --exclude='*.safetensors' --exclude='*.bin' -czf "$out/logs.tar.gz" .
  cp "$summary" "$out/summary.txt"
  [ -f "$work/retrieval.csv" ] && cp "$work/retrieval.csv" "$out/retrieval.csv"
  echo; echo "=== summary ($((SECONDS)) s; worst exit status of a part: $worst) ==="
  cat "$summary"
}

if [ "$stage" != pack ]; then
  rm -rf "$work"
  mkdir -p "$work"
fi
case "$stage" in
  pack)
    set -e
    cmake --build build -j"$(nproc)"
    rm -rf .devpack
    # Without the LD_LIBRARY_PATH above: ldd would name the libraries copied so
    # far by relative paths, which devpack skips (and then stops).
    env -u LD_LIBRARY_PATH ../shared/tools/devpack .devpack build/bin/fwp-tests build/bin/fwp-bench-gpu \
      build/bin/fwp-bench-server build/bin/fwp-train build/bin/fwp-eval \
      build/bin/fwp-retrieval build/bin/libfwp_sentencepiece.so
    tar -C .devpack -cf - . | xz -T0 -6 > .devpack.tar.xz
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    for path in /.devpack/ /.devpack.tar.xz; do
      grep -qx "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
    done
    du -sh .devpack.tar.xz
    echo 'carry: [".devpack.tar.xz", "data/brown"]'
    exit 0
    ;;
  all)
    tests; bench; train; bench_cublas; sanitize 60 45
    # What is left, for the retrieval points that decide the paper's figures,
    # alternating between the settings, 30 s each.
    retrieval "1:sum:elu1:1:100 2:sum:dpfp:1:20 1:sum:dpfp:2:240 2:delta:dpfp:1:100
               1:sum:dpfp:3:340 2:delta:dpfp:2:200 1:sum:dpfp:3:600 2:delta:dpfp:1:140" 30
    ;;
  tests) tests ;;
  sanitize) sanitize ;;
  bench) bench; bench_cublas ;;
  train) train ;;
  retrieval)
    case "${2:-1}" in
      1) retrieval "$setting1" 45 ;;
      2) retrieval "$setting2" 75 ;;
      *) retrieval "$2" "${RETRIEVAL_SECONDS:-60}" ;;
    esac
    ;;
  *)
    echo "usage: bench/gpu_check.sh pack|all|tests|sanitize|bench|train|retrieval [1|2|POINTS]" >&2
    exit 2
    ;;
esac
finish
exit $((worst > 255 ? 255 : worst))
