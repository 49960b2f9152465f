// Token sampling on the GPU (see sampling.h): one block per row, so a row's
// token depends on its logits and its draw only, never on the batch.
//
//   greedy rows   a block argmax (the lowest id among equal maxima);
//   sampled rows  the row's sampling-order keys (math::SampleOrderKey) are
//                 sorted in global scratch by a block bitonic sort, the
//                 candidates' p_i = exp((l_i − l_max)/T) are computed in
//                 parallel (each independently, as on the CPU), and one
//                 thread runs math::ChooseCandidate: the in-order sums, the
//                 top-p and min-p cut-offs and the draw, the same code the CPU
//                 runs. Only the token comes back to the host.
//
// The in-order sums on one thread cost O(keep) per sampled row; a tree order
// shared with the CPU definition would make them O(log keep) (next step if
// the sampler shows in a profile).
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/shared_math.h"

namespace fwp::cuda {
namespace {

constexpr int kThreads = 1024;

// work[row]: the row's place in keys and probs (sampled rows only).
__global__ void __launch_bounds__(kThreads) SampleKernel(const float* logits, int64_t vocab, int64_t padded,
                             const RowSampling* sampling, const int32_t* work, uint64_t* keys,
                             double* probs, int32_t* tokens) {
  const int64_t row = blockIdx.x;
  const float* l = logits + row * vocab;
  const RowSampling rs = sampling[row];
  const SamplingParams& sp = rs.params;
  if (math::GreedySampling(sp.temperature, sp.top_k)) {
    // Argmax; ties to the lowest id; NaNs are passed over (as cpu::Argmax
    // does, which returns 0 only when logit 0 is NaN). Per thread, then
    // across the block.
    float best = -INFINITY;
    int64_t best_id = vocab;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float x = l[j];
      if (!isnan(x) && (best_id == vocab || x > best)) {
        best = x;
        best_id = j;
      }
    }
    __shared__ float values[kThreads];
    __shared__ int64_t ids[kThreads];
    values[threadIdx.x] = best;
    ids[threadIdx.x] = best_id;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) {
        const float v = values[threadIdx.x + stride];
        const int64_t id = ids[threadIdx.x + stride];
        if (id < vocab && (ids[threadIdx.x] == vocab || v > values[threadIdx.x] ||
                           (v == values[threadIdx.x] && id < ids[threadIdx.x]))) {
          values[threadIdx.x] = v;
          ids[threadIdx.x] = id;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      tokens[row] = isnan(l[0]) || ids[0] == vocab ? 0 : static_cast<int32_t>(ids[0]);
    }
    return;
  }
  uint64_t* k = keys + work[row] * padded;
  double* p = probs + work[row] * padded;
  for (int64_t j = threadIdx.x; j < padded; j += blockDim.x) {
    k[j] = j < vocab ? math::SampleOrderKey(l[j], static_cast<int32_t>(j)) : ~uint64_t{0};
  }
  __syncthreads();
  // Bitonic sort, ascending: the sampling order.
  for (int64_t size = 2; size <= padded; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t i = threadIdx.x; i < padded; i += blockDim.x) {
        const int64_t partner = i ^ stride;
        if (partner > i) {
          const uint64_t a = k[i], b = k[partner];
          const bool ascending = (i & size) == 0;
          if ((a > b) == ascending) {
            k[i] = b;
            k[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  const int64_t keep = sp.top_k > 0 && sp.top_k < vocab ? sp.top_k : vocab;
  const double inv_t = 1.0 / static_cast<double>(sp.temperature);
  const double top = l[static_cast<uint32_t>(k[0])];
  for (int64_t i = threadIdx.x; i < keep; i += blockDim.x) {
    const double diff = static_cast<double>(l[static_cast<uint32_t>(k[i])]) - top;
    p[i] = exp(__dmul_rn(diff, inv_t));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t chosen = math::ChooseCandidate(p, keep, sp.top_p, sp.min_p, rs.uniform);
    tokens[row] = static_cast<int32_t>(static_cast<uint32_t>(k[chosen]));
  }
}

// The bitonic sort's length: the vocabulary rounded up to a power of two.
int64_t Padded(int64_t vocab) {
  int64_t padded = 1;
  while (padded < vocab) padded <<= 1;
  return padded;
}

}  // namespace

int64_t SampleScratchBytes(int64_t rows, int64_t sampled_rows, int64_t vocab) {
  const int64_t padded = Padded(vocab);
  return sampled_rows * padded * (sizeof(uint64_t) + sizeof(double)) +
         rows * (sizeof(RowSampling) + 2 * sizeof(int32_t)) + 64;
}

void SampleRows(cudaStream_t stream, const float* logits, int64_t rows, int64_t vocab,
                const RowSampling* sampling, const int32_t* work, int64_t sampled_rows,
                int32_t* tokens, void* scratch) {
  if (rows == 0) return;
  const int64_t padded = Padded(vocab);
  // Scratch: keys and probabilities [sampled_rows, padded], then the rows'
  // parameters, their places and their tokens.
  auto* keys = static_cast<uint64_t*>(scratch);
  auto* probs = reinterpret_cast<double*>(keys + sampled_rows * padded);
  auto* params = reinterpret_cast<RowSampling*>(probs + sampled_rows * padded);
  auto* places = reinterpret_cast<int32_t*>(params + rows);
  auto* out = places + rows;
  FWP_CUDA_CHECK("sampler parameters",
                 cudaMemcpyAsync(params, sampling, rows * sizeof(RowSampling),
                                 cudaMemcpyHostToDevice, stream));
  FWP_CUDA_CHECK("sampler rows", cudaMemcpyAsync(places, work, rows * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, stream));
  SampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits, vocab, padded, params, places, keys, probs, out);
  FWP_CUDA_LAUNCHED("sample rows");
  FWP_CUDA_CHECK("sampled tokens", cudaMemcpyAsync(tokens, out, rows * sizeof(int32_t),
                                                   cudaMemcpyDeviceToHost, stream));
  FWP_CUDA_CHECK("sampler sync", cudaStreamSynchronize(stream));
}

}  // namespace fwp::cuda
