// AdamW on the GPU (see adamw.h), elementwise.
#include <algorithm>
#include <cmath>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace fwp::cuda {
namespace {

__global__ void AdamWKernel(float* param, const float* grad, float* m, float* v, int64_t n,
                            AdamWParams p, float correction1, float correction2) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float g = grad[i] * p.grad_scale;
  const float mi = p.beta1 * m[i] + (1.0f - p.beta1) * g;
  const float vi = p.beta2 * v[i] + (1.0f - p.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  const float m_hat = mi / correction1;
  const float v_hat = vi / correction2;
  param[i] -= p.lr * (m_hat / (sqrtf(v_hat) + p.eps) + p.weight_decay * param[i]);
}

// Per-block partial sums of squares (float per element, double per block),
// summed on the host in block order: deterministic.
__global__ void SumSquaresKernel(const float* x, int64_t n, double* partial) {
  __shared__ float scratch[32];
  float acc = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc += x[i] * x[i];
  }
  acc = BlockSum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

}  // namespace

int SumSquaresBlocks(int64_t n) { return static_cast<int>(std::min<int64_t>(1024, Blocks(n, 256))); }

void SumSquares(cudaStream_t stream, const float* x, int64_t n, double* partial) {
  SumSquaresKernel<<<SumSquaresBlocks(n), 256, 0, stream>>>(x, n, partial);
  FWP_CUDA_LAUNCHED("sum of squares");
}

void AdamW(cudaStream_t stream, float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWParams& p) {
  if (n == 0) return;
  const float c1 = 1.0f - std::pow(p.beta1, static_cast<float>(p.step));
  const float c2 = 1.0f - std::pow(p.beta2, static_cast<float>(p.step));
  AdamWKernel<<<Blocks(n, 256), 256, 0, stream>>>(param, grad, m, v, n, p, c1, c2);
  FWP_CUDA_LAUNCHED("adamw");
}

}  // namespace fwp::cuda
