// LayerNorm on the GPU (see layernorm.h). One warp per row; statistics in
// two passes over the row (mean, then centred squares) for stability. y may
// alias x: each lane reads its elements before any lane writes (the row is
// read fully in the statistics passes, which end in warp reductions).
#include "kernels/column_sums.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace fwp::cuda {
namespace {

__device__ void RowStats(const float* xr, int64_t d, float eps, float* mean, float* rstd) {
  const int lane = threadIdx.x % 32;
  float sum = 0.0f;
  for (int64_t j = lane; j < d; j += 32) sum += xr[j];
  const float m = WarpSum(sum) / static_cast<float>(d);
  float sq = 0.0f;
  for (int64_t j = lane; j < d; j += 32) {
    const float c = xr[j] - m;
    sq += c * c;
  }
  *mean = m;
  *rstd = rsqrtf(WarpSum(sq) / static_cast<float>(d) + eps);
}

__global__ void LayerNormKernel(const float* x, const float* gamma, const float* beta,
                                int64_t rows, int64_t d, float eps, float* y) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const float* xr = x + row * d;
  float mean, rstd;
  RowStats(xr, d, eps, &mean, &rstd);
  float* yr = y + row * d;
  for (int64_t j = threadIdx.x % 32; j < d; j += 32) {
    yr[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
  }
}

// dx += rstd · (g − mean(g) − x̂ · mean(g·x̂)), g = dy·γ; saves (mean, rstd).
__global__ void LayerNormBackwardRows(const float* x, const float* gamma, const float* dy,
                                      int64_t rows, int64_t d, float eps, float* dx,
                                      float* stats) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const float* xr = x + row * d;
  const float* gr = dy + row * d;
  float mean, rstd;
  RowStats(xr, d, eps, &mean, &rstd);
  float mean_g = 0.0f, mean_gx = 0.0f;
  for (int64_t j = threadIdx.x % 32; j < d; j += 32) {
    const float g = gr[j] * gamma[j];
    mean_g += g;
    mean_gx += g * (xr[j] - mean) * rstd;
  }
  mean_g = WarpSum(mean_g) / static_cast<float>(d);
  mean_gx = WarpSum(mean_gx) / static_cast<float>(d);
  float* dxr = dx + row * d;
  for (int64_t j = threadIdx.x % 32; j < d; j += 32) {
    const float xhat = (xr[j] - mean) * rstd;
    dxr[j] += rstd * (gr[j] * gamma[j] - mean_g - xhat * mean_gx);
  }
  if (threadIdx.x % 32 == 0) {
    stats[2 * row] = mean;
    stats[2 * row + 1] = rstd;
  }
}

// dy·x̂ and dy at (r, j), for dgamma[j] += Σ_r dy·x̂ and dbeta[j] += Σ_r dy
// (column_sums.cuh).
struct ScaleAndShiftRows {
  const float* x;
  const float* dy;
  const float* stats;  // mean, rstd per row
  int64_t d;
  __device__ void operator()(int64_t r, int64_t j, float* v) const {
    const float g = dy[r * d + j];
    v[0] = g * (x[r * d + j] - stats[2 * r]) * stats[2 * r + 1];
    v[1] = g;
  }
};

}  // namespace

void LayerNorm(cudaStream_t stream, const float* x, const float* gamma, const float* beta,
               int64_t rows, int64_t d, float eps, float* y) {
  if (rows == 0) return;
  LayerNormKernel<<<Blocks(rows, 8), 256, 0, stream>>>(x, gamma, beta, rows, d, eps, y);
  FWP_CUDA_LAUNCHED("layernorm");
}

int64_t LayerNormBackwardScratch(int64_t rows, int64_t d) {
  return 2 * rows + ColumnSumScratch(rows, d, 2);
}

void LayerNormBackward(cudaStream_t stream, const float* x, const float* gamma, const float* dy,
                       int64_t rows, int64_t d, float eps, float* dx, float* dgamma,
                       float* dbeta, float* scratch) {
  if (rows == 0 || d == 0) return;
  LayerNormBackwardRows<<<Blocks(rows, 8), 256, 0, stream>>>(x, gamma, dy, rows, d, eps, dx,
                                                             scratch);
  FWP_CUDA_LAUNCHED("layernorm backward rows");
  float* partial = scratch + 2 * rows;
  auto* partials = ColumnSumPartials<2, ScaleAndShiftRows>;
  partials<<<ColumnSumGrid(rows, d), 256, 0, stream>>>(ScaleAndShiftRows{x, dy, scratch, d}, rows,
                                                       d, partial);
  FWP_CUDA_LAUNCHED("layernorm backward column partials");
  auto* add = AddColumnSumPartials<2>;
  add<<<Blocks(2 * d, 256), 256, 0, stream>>>(partial, ColumnSumParts(rows), d,
                                              ColumnSumOutputs<2>{{dgamma, dbeta}});
  FWP_CUDA_LAUNCHED("layernorm backward columns");
}

}  // namespace fwp::cuda
