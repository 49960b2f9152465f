#!/usr/bin/env bash
# Runs kernels/fast_weight.cu's kernels on the CPU (no GPU needed) against the
# CPU reference: every block's threads as fibers with real barrier semantics.
#
#   tools/cuda_emulation/run.sh RULE NORM PHI NU D_HEAD D_VALUE HEADS BATCH TIME CHUNK SMEM_BYTES
#   tools/cuda_emulation/run.sh d 0 dpfp 1 8 37 2 2 10 4 4400     # forces 5 column tiles
#
# SMEM_BYTES is the shared memory the emulated device offers a block (an H100
# offers 232448); a small value forces the column-tile path on small shapes.
# Prints the relative errors of y, the final state, dqkvb and dstate against
# cpu::FastWeightSequence(Backward), NaN counts (shared memory starts as NaN,
# so a read of an unwritten element shows), and aborts on a divergent barrier,
# a shared-memory overflow, or a launch over 48 KB without the attribute set.
# Optional 12th/13th arguments: thread order and block order (0 forward,
# 1 reverse, 2 random): results that change with the order reveal a race.
#
# ctest runs eight cases of it (tools/cuda_emulation/CMakeLists.txt,
# cuda_emulation.*), sampling.cu against cpu::SampleRows
# (fwp-cuda-sampler-emulation), feature_map.cu, layernorm.cu,
# cross_entropy.cu, activation.cu, embedding.cu and adamw.cu against their
# twins (fwp-cuda-ops-emulation), and matmul_invariant.cu against cpu::Matmul
# with its batch invariance (fwp-cuda-matmul-emulation).
#
# The whole backend: fwp-cuda-backend-emulation is the GPU test suite itself
# (tests/kernels/cuda_ops_test.cc and the trainer's GPU test) built on the
# emulated kernels, kernels/cuda_backend.cu, and the shim's runtime (device
# memory on the host, poisoned as NaN; synchronous streams) and cuBLAS Sgemm
# (summed in double). ctest runs 13 of its 14 GPU tests (all but the
# thousand decode steps); all 14, about 25 minutes of one core:
#
#   build/bin/fwp-cuda-backend-emulation
#
# Limits: one or two seconds for a small case; the shim
# (inc/kernels/cuda_common.cuh) supplies threadIdx, __syncthreads, shuffles
# and the runtime calls, then includes the real cuda_common.cuh; warps are not lock-step and
# memory is sequentially consistent, so it finds indexing, barrier and
# cross-block ordering bugs, not hardware-specific ones. A real GPU run of
# the CudaOps tests is still the test, and the only one of speed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${TMPDIR:-/tmp}/fwp_cuda_emulation
mkdir -p "$work"
python3 "$here/prep.py" "$root/kernels/fast_weight.cu" "$work/fast_weight_emulated.inc"
g++ -std=c++20 -O1 -w -DFAST_WEIGHT_INC='"fast_weight_emulated.inc"' -I"$here/inc" -I"$root" -I"$work" \
  "$here/driver.cc" "$root/kernels/fast_weight.cc" "$root/kernels/feature_map.cc" \
  "$root/kernels/thread_pool.cc" -o "$work/emulate" -lopenblas -lpthread
[ $# -ge 13 ] || set -- "$@" 0 0
exec "$work/emulate" "$@"
