// AdamW on the GPU (see adamw.h), elementwise.
#include <cmath>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace fwp::cuda {
namespace {

__global__ void AdamWKernel(float* param, const float* grad, float* m, float* v, int64_t n,
                            AdamWParams p, float correction1, float correction2) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float g = grad[i];
  const float mi = p.beta1 * m[i] + (1.0f - p.beta1) * g;
  const float vi = p.beta2 * v[i] + (1.0f - p.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  const float m_hat = mi / correction1;
  const float v_hat = vi / correction2;
  param[i] -= p.lr * (m_hat / (sqrtf(v_hat) + p.eps) + p.weight_decay * param[i]);
}

}  // namespace

void AdamW(cudaStream_t stream, float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWParams& p) {
  if (n == 0) return;
  const float c1 = 1.0f - std::pow(p.beta1, static_cast<float>(p.step));
  const float c2 = 1.0f - std::pow(p.beta2, static_cast<float>(p.step));
  AdamWKernel<<<Blocks(n, 256), 256, 0, stream>>>(param, grad, m, v, n, p, c1, c2);
  FWP_CUDA_LAUNCHED("adamw");
}

}  // namespace fwp::cuda
