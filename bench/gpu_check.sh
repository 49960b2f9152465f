#!/usr/bin/env bash
# The GPU tests and figures the CUDA backend and the trainer owe, as a few
# device calls that each fit the device tool's 10-minute limit.
#
#   here (build machine):   bench/gpu_check.sh pack
#   device, one call each:  bash bench/gpu_check.sh tests      (carry .devpack.tar.gz)
#                           bash bench/gpu_check.sh sanitize   (memcheck, racecheck)
#                           bash bench/gpu_check.sh bench
#                           bash bench/gpu_check.sh train      (carry .devpack.tar.gz, data/brown)
#                           bash bench/gpu_check.sh retrieval 1   (then 2)
#
# `pack` builds and copies the programs with their libraries (and the
# SentencePiece plugin, which is loaded from beside them) into .devpack, and
# packs that into .devpack.tar.gz (about 29 MB, where .devpack is 81 MB: the
# device tool carries 64 MiB at most with the tracked tree's 23 MB, so only the
# train stage takes data/brown's 12 MB, and never all of data/). Each device
# stage unpacks it when .devpack is not there yet, finds the CUDA libraries
# that devpack leaves to the device (cudart, cuBLAS) if the loader does not,
# and writes its logs under $OUT (or ./gpu-out without one). On a fault, rerun
# the failing filter with CUDA_LAUNCH_BLOCKING=1: the launch check then names
# the kernel.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-}
out=${OUT:-gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH=.devpack/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=.devpack/bin
if [ "$stage" != pack ] && [ ! -d .devpack ] && [ -f .devpack.tar.gz ]; then
  mkdir -p .devpack && tar -C .devpack -xzf .devpack.tar.gz
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
    tar -C .devpack -czf .devpack.tar.gz .
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    for path in /.devpack/ /.devpack.tar.gz; do
      grep -qx "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
    done
    du -sh .devpack.tar.gz
    echo "carry: .devpack.tar.gz   (and data/brown for the train stage)"
    ;;
  tests)
    nvidia-smi > "$out/gpu.txt" 2>&1
    # The CUDA half of the suite: every op against the CPU, the decode step,
    # the whole model, the sampler, training on the GPU.
    timeout 400 "$bin/fwp-tests" --gtest_filter='CudaOps*:Device*:*Gpu*' 2>&1 | tee "$out/tests.txt" | tail -40
    # A backend that cannot start skips every GPU test, and gtest calls that a pass.
    if grep -q '^\[  SKIPPED \]' "$out/tests.txt"; then
      echo "gpu_check: GPU TESTS SKIPPED (no usable device?):"; grep -m 3 -A2 '^\[ RUN' "$out/tests.txt"
    fi
    # fwp-server's own suite with the CUDA backend: batching exactness, the
    # host and disk tiers, the GPU sampler among host-drawn rows.
    FWP_TEST_BACKEND=cuda timeout 170 "$bin/fwp-tests" --gtest_filter='Server*' 2>&1 \
      | tee "$out/server_tests.txt" | tail -20
    ;;
  sanitize)
    # compute-sanitizer (where the runtime allows it: Firecracker, not gVisor)
    # over the hand-written kernels on small cases: out-of-bounds accesses,
    # then shared-memory races in the fast-weight and sampler kernels.
    filter='CudaOps.FastWeight*:CudaOps.SampleRows*:CudaOps.Embedding*:CudaOps.LayerNorm*:CudaOps.Feature*'
    sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    timeout 300 "$sanitizer" --tool memcheck --error-exitcode 9 "$bin/fwp-tests" \
      --gtest_filter="$filter" > "$out/memcheck.txt" 2>&1; echo "memcheck rc=$?" | tee -a "$out/memcheck.txt"
    timeout 240 "$sanitizer" --tool racecheck --error-exitcode 9 "$bin/fwp-tests" \
      --gtest_filter='CudaOps.FastWeightStates*:CudaOps.SampleRows*' > "$out/racecheck.txt" 2>&1
    echo "racecheck rc=$?" | tee -a "$out/racecheck.txt"
    tail -n 15 "$out/memcheck.txt" "$out/racecheck.txt"
    ;;
  bench)
    timeout 240 "$bin/fwp-bench-gpu" --seconds 1 > "$out/bench-gpu.txt" 2>&1
    timeout 120 "$bin/fwp-bench-gpu" --seconds 1 --batch_invariant=false > "$out/bench-gpu-cublas.txt" 2>&1
    timeout 200 "$bin/fwp-bench-server" --backend cuda --model models/default \
      --levels 1,16,64,256 --tokens 128 > "$out/bench-server.txt" 2>&1
    tail -n 60 "$out"/bench-*.txt
    ;;
  train)
    # fwp-train's own tokens/s on the GPU (the default model's recipe, 300 steps).
    rm -rf "$out/train-run" "$out"/accum-*  # a rerun on a warm machine starts afresh
    timeout 300 "$bin/fwp-train" --config models/default.json --data data/brown \
      --backend cuda --out "$out/train-run" --steps 300 --eval_every 100 --eval_windows 64 \
      --checkpoint_every 1000 > "$out/train.txt" 2>&1
    tail -n 20 "$out/train.txt"
    # Gradient accumulation and stream evaluation on the GPU against the CPU:
    # the same 20 carried steps (4 passes of 4 streams), losses side by side.
    for backend in cuda cpu; do
      timeout 90 "$bin/fwp-train" --config models/default.json --data data/brown \
        --backend "$backend" --out "$out/accum-$backend" --steps 20 --batch 4 --accum 4 \
        --carry_state --eval_every 10 --eval_windows 40 --checkpoint_every 1000 \
        > "$out/accum-$backend.txt" 2>&1
    done
    paste -d, <(cut -d, -f1,3,6 "$out/accum-cuda/log.csv") <(cut -d, -f3,6 "$out/accum-cpu/log.csv") \
      | tee "$out/accum.csv" | tail -n 3
    # The shipped model's perplexity on the GPU (the CPU measures 273.31 window,
    # 270.61 stream on the test split).
    for context in window stream; do
      timeout 45 "$bin/fwp-eval" --backend cuda --model models/default --data data/brown \
        --split test --context "$context" 2>&1 | tee -a "$out/eval.txt"
    done
    ;;
  retrieval)
    # The paper's synthetic experiments at the points that decide its figures
    # (around each memory's capacity), its 100k-step budget capped by time so
    # that one call fits: `retrieval 1` (capacity), `retrieval 2` (updates).
    # Points are setting:update:phi:nu:S; the CUDA kernels split d_value = S
    # over column tiles, so every S of the paper runs.
    csv="$out/retrieval.csv"
    case "${2:-1}" in
      1) points="1:sum:elu1:1:60 1:sum:elu1:1:100 1:sum:dpfp:1:100 1:sum:dpfp:1:160
                 1:sum:dpfp:2:240 1:sum:dpfp:2:300 1:sum:dpfp:3:340 1:sum:dpfp:3:440
                 1:sum:dpfp:3:600"; seconds=45 ;;
      2) points="2:sum:dpfp:1:20 2:sum:dpfp:2:60 2:delta:elu1:1:60 2:delta:dpfp:1:100
                 2:delta:dpfp:1:140 2:delta:dpfp:2:200"; seconds=75 ;;
      *) points="$2"; seconds=${RETRIEVAL_SECONDS:-60} ;;
    esac
    for point in $points; do
      IFS=: read -r setting rule phi nu S <<<"$point"
      timeout $((seconds + 60)) "$bin/fwp-retrieval" --backend cuda --setting "$setting" \
        --update "$rule" --phi "$phi" --nu "$nu" --from "$S" --to "$S" \
        --max_seconds "$seconds" --csv "$csv" 2>&1 | tee -a "$out/retrieval.txt"
    done
    ;;
  *)
    echo "usage: bench/gpu_check.sh pack|tests|sanitize|bench|train|retrieval [1|2|POINTS]" >&2
    exit 2
    ;;
esac
