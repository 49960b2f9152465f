// FFN activation on the GPU (see activation.h); the scalar math is shared
// with the CPU (shared_math.h).
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/shared_math.h"

namespace fwp::cuda {
namespace {

__global__ void ActivateKernel(Activation act, float* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  x[i] = act == Activation::kRelu ? math::Relu(x[i]) : math::Gelu(x[i]);
}

__global__ void ActivateBackwardKernel(Activation act, const float* x, const float* dy,
                                       int64_t n, float* dx) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float g = act == Activation::kRelu ? (x[i] > 0.0f ? 1.0f : 0.0f) : math::GeluGrad(x[i]);
  dx[i] = dy[i] * g;
}

}  // namespace

void Activate(cudaStream_t stream, Activation act, float* x, int64_t n) {
  if (n == 0) return;
  ActivateKernel<<<Blocks(n, 256), 256, 0, stream>>>(act, x, n);
  FWP_CUDA_LAUNCHED("activation");
}

void ActivateBackward(cudaStream_t stream, Activation act, const float* x, const float* dy,
                      int64_t n, float* dx) {
  if (n == 0) return;
  ActivateBackwardKernel<<<Blocks(n, 256), 256, 0, stream>>>(act, x, dy, n, dx);
  FWP_CUDA_LAUNCHED("activation backward");
}

}  // namespace fwp::cuda
