// Column sums on the GPU, deterministic: out_k[j] += Σ_i f_k(i, j) over the
// m rows of an [m, n] matrix, for K sums per column at once (matmul's dbias:
// K = 1; LayerNorm's dgamma and dbeta: K = 2).
//
// One thread per column running down all m rows leaves the GPU nearly idle on
// training's tall matrices (n = 256 columns, so 256 threads, over m = 32k
// rows). Here a block takes 32 columns × kColumnSumRows rows and writes one
// partial per column: 8 row lanes, each over its rows in order, then the lanes
// in order. A second pass adds the partials in order. The split depends only
// on m, so the same shapes give the same bits, run after run (training on the
// GPU resumes exactly).
#pragma once

#include <cstdint>

#include "kernels/cuda_common.cuh"

namespace fwp::cuda {

inline constexpr int64_t kColumnSumRows = 256;

inline int64_t ColumnSumParts(int64_t m) { return (m + kColumnSumRows - 1) / kColumnSumRows; }
// Floats of device scratch the partials of K sums over [m, n] need.
inline int64_t ColumnSumScratch(int64_t m, int64_t n, int k) { return ColumnSumParts(m) * n * k; }

// Pass 1: grid (parts, column tiles of 32), 256 threads: lane = thread % 32 is
// the column, thread / 32 the row lane. partial[(k · parts + part) · n + j].
template <int K, typename Rows>
__global__ void ColumnSumPartials(Rows f, int64_t m, int64_t n, float* partial) {
  __shared__ float lanes[K][8][32];
  const int lane = threadIdx.x % 32, row_lane = threadIdx.x / 32;
  const int64_t j = blockIdx.y * 32 + lane;
  const int64_t part = blockIdx.x, parts = gridDim.x;
  const int64_t begin = part * kColumnSumRows;
  const int64_t end = begin + kColumnSumRows < m ? begin + kColumnSumRows : m;
  float acc[K];
  for (int k = 0; k < K; ++k) acc[k] = 0.0f;
  if (j < n) {
    for (int64_t i = begin + row_lane; i < end; i += 8) {
      float v[K];
      f(i, j, v);
      for (int k = 0; k < K; ++k) acc[k] += v[k];
    }
  }
  for (int k = 0; k < K; ++k) lanes[k][row_lane][lane] = acc[k];
  __syncthreads();
  if (row_lane == 0 && j < n) {
    for (int k = 0; k < K; ++k) {
      float s = 0.0f;
      for (int r = 0; r < 8; ++r) s += lanes[k][r][lane];
      partial[(k * parts + part) * n + j] = s;
    }
  }
}

template <int K>
struct ColumnSumOutputs {
  float* out[K];
};

// Pass 2: one thread per column and sum, the parts in order.
template <int K>
__global__ void AddColumnSumPartials(const float* partial, int64_t parts, int64_t n,
                                     ColumnSumOutputs<K> outputs) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= K * n) return;
  const int64_t k = idx / n, j = idx % n;
  float s = 0.0f;
  for (int64_t p = 0; p < parts; ++p) s += partial[(k * parts + p) * n + j];
  outputs.out[k][j] += s;
}

// Pass 1's grid. A caller launches, in its .cu file (the emulation rewrites
// launches there, not in headers, and only through a plain kernel name):
//   auto* partials = ColumnSumPartials<K, Rows>;
//   partials<<<ColumnSumGrid(m, n), 256, 0, stream>>>(f, m, n, scratch);
//   auto* add = AddColumnSumPartials<K>;
//   add<<<Blocks(K * n, 256), 256, 0, stream>>>(scratch, ColumnSumParts(m), n, outputs);
// with `scratch` of ColumnSumScratch(m, n, K) floats, for out[k][j] += Σ_i f(i, j)[k].
inline dim3 ColumnSumGrid(int64_t m, int64_t n) {
  return dim3(static_cast<unsigned>(ColumnSumParts(m)), static_cast<unsigned>((n + 31) / 32));
}

}  // namespace fwp::cuda
