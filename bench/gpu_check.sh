#!/usr/bin/env bash
# The GPU tests and figures the CUDA backend and the trainer owe, as a few
# device calls that each fit the device tool's 10-minute limit.
#
#   here (build machine):   bench/gpu_check.sh pack
#   device, one call each:  bash bench/gpu_check.sh tests      (carry .devpack, data)
#                           bash bench/gpu_check.sh bench
#                           bash bench/gpu_check.sh train       (and fwp-eval on the GPU)
#                           bash bench/gpu_check.sh retrieval
#
# `pack` builds and copies the programs with their libraries (and the
# SentencePiece plugin, which is loaded from beside them) into .devpack; the
# device stages write their logs under $OUT (or ./gpu-out without one).
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-}
out=${OUT:-gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH=.devpack/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=.devpack/bin

case "$stage" in
  pack)
    set -e
    cmake --build build -j"$(nproc)"
    rm -rf .devpack
    ../shared/tools/devpack .devpack build/bin/fwp-tests build/bin/fwp-bench-gpu \
      build/bin/fwp-bench-server build/bin/fwp-train build/bin/fwp-eval \
      build/bin/fwp-retrieval build/bin/libfwp_sentencepiece.so
    grep -qx '/.devpack/' .git/info/exclude 2>/dev/null || echo /.devpack/ >> .git/info/exclude
    echo "carry: .devpack data   (data/brown for the train stage)"
    ;;
  tests)
    nvidia-smi > "$out/gpu.txt" 2>&1
    # The CUDA half of the suite: every op against the CPU, the decode step,
    # the whole model, the sampler, training on the GPU.
    timeout 540 "$bin/fwp-tests" --gtest_filter='CudaOps*:Device*:*Gpu*' 2>&1 | tee "$out/tests.txt" | tail -40
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
    timeout 500 "$bin/fwp-train" --config models/default.json --data data/brown \
      --backend cuda --out "$out/train-run" --steps 300 --eval_every 100 --eval_windows 64 \
      --checkpoint_every 1000 > "$out/train.txt" 2>&1
    tail -n 20 "$out/train.txt"
    # The shipped model's perplexity on the GPU (the CPU measures 273.31 window,
    # 270.61 stream on the test split).
    for context in window stream; do
      timeout 60 "$bin/fwp-eval" --backend cuda --model models/default --data data/brown \
        --split test --context "$context" 2>&1 | tee -a "$out/eval.txt"
    done
    ;;
  retrieval)
    # The paper's synthetic sweeps where the CUDA memory kernels hold the
    # state on chip (d_phi * S <= 24576): setting 2, sum vs delta, DPFP-1.
    csv="$out/retrieval.csv"
    for rule in delta sum; do
      timeout 270 "$bin/fwp-retrieval" --backend cuda --setting 2 --update "$rule" --phi dpfp \
        --nu 1 --from 20 --to 180 --by 40 --csv "$csv" 2>&1 | tee -a "$out/retrieval.txt"
    done
    ;;
  *)
    echo "usage: bench/gpu_check.sh pack|tests|bench|train|retrieval" >&2
    exit 2
    ;;
esac
