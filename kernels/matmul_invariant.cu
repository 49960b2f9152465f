// A batch-invariant matmul for inference: C[m, n] (+)= A[m, k]·B[n, k]ᵀ + bias[n].
//
// cuBLAS chooses its algorithm (split-K, tile shapes, reduction order) by the
// problem's shape, so a session's logits change in the last bits with the
// number of sessions in the batch, and a greedy stream can change its tokens.
// Here every output element is one thread's sum over k in increasing order
// (fused multiply-adds, tiles of 16), then + bias, then + C when
// accumulating: the same instructions for row i whatever m is, so a row's
// bits depend only on its own inputs. The server decodes with it (Backend::
// SetBatchInvariant); training keeps cuBLAS.
//
// Tiles: 64×64 outputs per block of 256 threads, 4×4 per thread, k in steps
// of 16 through shared memory (transposed, so the inner loop reads
// broadcasts). Decode shapes (m ≤ a few hundred, n·k weights) are bound by
// reading B once per 64 rows of A.
#include <algorithm>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace fwp::cuda {
namespace {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreads = 256;  // 16 × 16, each 4 × 4 outputs

__global__ void __launch_bounds__(kThreads)
    InvariantMatmulKernel(const float* __restrict__ a, const float* __restrict__ b,
                          const float* __restrict__ bias, float* __restrict__ c, int64_t m,
                          int64_t n, int64_t k, bool accumulate) {
  __shared__ float as[kTileK][kTileM + 4];
  __shared__ float bs[kTileK][kTileN + 4];
  const int tx = threadIdx.x % 16;  // output columns tx*4 .. tx*4+3
  const int ty = threadIdx.x / 16;  // output rows ty*4 .. ty*4+3
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    // Each thread loads 4 elements of each tile: element e = threadIdx.x + 256·r
    // of the 64×16 tile, k fastest (coalesced along rows of A and B).
    for (int r = 0; r < 4; ++r) {
      const int e = threadIdx.x + kThreads * r;
      const int tile_row = e / kTileK;
      const int tile_k = e % kTileK;
      const int64_t kk = k0 + tile_k;
      const int64_t ar = row0 + tile_row;
      const int64_t br = col0 + tile_row;
      as[tile_k][tile_row] = (ar < m && kk < k) ? a[ar * k + kk] : 0.0f;
      bs[tile_k][tile_row] = (br < n && kk < k) ? b[br * k + kk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty * 4 + i;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tx * 4 + j;
      if (col >= n) continue;
      float v = acc[i][j];
      if (bias != nullptr) v += bias[col];
      float* out = c + row * n + col;
      *out = accumulate ? *out + v : v;
    }
  }
}

}  // namespace

void InvariantMatmul(cudaStream_t stream, const float* a, const float* b, const float* bias,
                     float* c, int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m == 0 || n == 0) return;
  // Rows are grid y, at most 65,535 tiles a launch; each row's bits are its
  // own, so the launches split nothing.
  constexpr int64_t kMaxRows = int64_t{65535} * kTileM;
  for (int64_t m0 = 0; m0 < m; m0 += kMaxRows) {
    const int64_t rows = std::min(kMaxRows, m - m0);
    const dim3 grid(static_cast<unsigned>((n + kTileN - 1) / kTileN),
                    static_cast<unsigned>((rows + kTileM - 1) / kTileM));
    InvariantMatmulKernel<<<grid, kThreads, 0, stream>>>(a + m0 * k, b, bias, c + m0 * n, rows,
                                                         n, k, accumulate);
    FWP_CUDA_LAUNCHED("invariant matmul");
  }
}

}  // namespace fwp::cuda
