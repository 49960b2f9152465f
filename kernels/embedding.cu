// Embedding on the GPU (see embedding.h). The backward adds rows with
// atomics, so the order of additions into a repeated token's row varies
// from run to run (last-bit differences; the CPU backward is the exact one).
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace fwp::cuda {
namespace {

__global__ void EmbeddingKernel(const int32_t* tokens, const int64_t* positions, int64_t n,
                                const float* table, int64_t d, float* out) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * d) return;
  const int64_t i = idx / d, j = idx % d;
  float v = table[static_cast<int64_t>(tokens[i]) * d + j];
  if (positions != nullptr) {
    // The CPU's SinusoidalCode, in double, rounded once to float.
    const int64_t pair = j / 2;
    const double inv_freq = pow(10000.0, -2.0 * static_cast<double>(pair) / static_cast<double>(d));
    const double angle = static_cast<double>(positions[i]) * inv_freq;
    v += static_cast<float>((j % 2 == 0) ? sin(angle) : cos(angle));
  }
  out[idx] = v;
}

__global__ void EmbeddingBackwardKernel(const int32_t* tokens, int64_t n, const float* dout,
                                        int64_t d, float* dtable) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * d) return;
  const int64_t i = idx / d, j = idx % d;
  atomicAdd(&dtable[static_cast<int64_t>(tokens[i]) * d + j], dout[idx]);
}

}  // namespace

void Embedding(cudaStream_t stream, const int32_t* tokens, const int64_t* positions, int64_t n,
               const float* table, int64_t d, float* out) {
  if (n * d == 0) return;
  EmbeddingKernel<<<Blocks(n * d, 256), 256, 0, stream>>>(tokens, positions, n, table, d, out);
  FWP_CUDA_LAUNCHED("embedding");
}

void EmbeddingBackward(cudaStream_t stream, const int32_t* tokens, int64_t n, const float* dout,
                       int64_t d, float* dtable) {
  if (n * d == 0) return;
  EmbeddingBackwardKernel<<<Blocks(n * d, 256), 256, 0, stream>>>(tokens, n, dout, d, dtable);
  FWP_CUDA_LAUNCHED("embedding backward");
}

}  // namespace fwp::cuda
