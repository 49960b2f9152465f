// Feature maps on the GPU (see feature_map.h): one block per row.
#include "kernels/cuda_ops.h"
#include "kernels/feature_map.cuh"

namespace fwp::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void FeatureMapKernel(FeatureMapSpec spec, const float* x, int d, int64_t x_stride,
                                 const float* omega, float* phi) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  PhiBlock(spec, x + row * x_stride, d, omega, phi + row * PhiDim(spec, d), scratch,
           spec.sum_norm);
}

__global__ void FeatureMapBackwardKernel(FeatureMapSpec spec, const float* x, int d,
                                         int64_t x_stride, const float* omega, const float* dphi,
                                         float* dx, int64_t dx_stride) {
  __shared__ float scratch[32];
  extern __shared__ float shared[];
  const int dp = PhiDim(spec, d);
  float* g = shared;
  float* dg = g + dp;
  float* r = dg + dp;
  const int64_t row = blockIdx.x;
  PhiBackwardBlock(spec, x + row * x_stride, d, omega, dphi + row * dp, dx + row * dx_stride, g,
                   dg, r, scratch);
}

}  // namespace

void FeatureMap(cudaStream_t stream, const FeatureMapSpec& spec, const float* x, int64_t rows,
                int64_t d, int64_t x_stride, const float* favor_proj, float* phi) {
  if (rows == 0) return;
  FeatureMapKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      spec, x, static_cast<int>(d), x_stride, favor_proj, phi);
  FWP_CUDA_LAUNCHED("feature map");
}

void FeatureMapBackward(cudaStream_t stream, const FeatureMapSpec& spec, const float* x,
                        int64_t rows, int64_t d, int64_t x_stride, const float* favor_proj,
                        const float* dphi, float* dx, int64_t dx_stride) {
  if (rows == 0) return;
  const size_t shared = PhiBackwardShared(spec, d) * sizeof(float);
  // Beyond the default 48 KB (with the kernel's static scratch): opt in
  // (wide DPFP ν or many favor features).
  if (shared + 32 * sizeof(float) > 48 * 1024) {
    FWP_CUDA_CHECK("feature map backward smem",
                   cudaFuncSetAttribute(FeatureMapBackwardKernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared)));
  }
  FeatureMapBackwardKernel<<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(
      spec, x, static_cast<int>(d), x_stride, favor_proj, dphi, dx, dx_stride);
  FWP_CUDA_LAUNCHED("feature map backward");
}

}  // namespace fwp::cuda
