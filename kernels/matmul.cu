// Matmul on the GPU through cuBLAS (see matmul.h). Row-major C = A·Bᵀ is the
// column-major Cᵀ = B·Aᵀ, so B goes first. The handle is set to pedantic
// float32 math (no TF32) by the backend so results match the CPU to 1e-5.
#include "kernels/column_sums.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace fwp::cuda {
namespace {

// c[i, :] = bias (or += bias when accumulating).
__global__ void AddBiasRows(const float* bias, float* c, int64_t m, int64_t n, bool accumulate) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= m * n) return;
  const float b = bias[idx % n];
  c[idx] = accumulate ? c[idx] + b : b;
}

// dc's rows, for dbias[j] += Σ_i dc[i, j] (column_sums.cuh).
struct GradientRows {
  const float* dc;
  int64_t n;
  __device__ void operator()(int64_t i, int64_t j, float* v) const { v[0] = dc[i * n + j]; }
};

}  // namespace

void Matmul(cublasHandle_t handle, cudaStream_t stream, const float* a, const float* b,
            const float* bias, float* c, int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m == 0 || n == 0) return;
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias != nullptr) {
    AddBiasRows<<<Blocks(m * n, 256), 256, 0, stream>>>(bias, c, m, n, accumulate);
    FWP_CUDA_LAUNCHED("matmul bias");
    beta = 1.0f;
  }
  if (k == 0) {
    if (beta == 0.0f) FWP_CUDA_CHECK("matmul zero", cudaMemsetAsync(c, 0, m * n * 4, stream));
    return;
  }
  const float alpha = 1.0f;
  FWP_CUBLAS_CHECK("matmul", cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n),
                                         static_cast<int>(m), static_cast<int>(k), &alpha, b,
                                         static_cast<int>(k), a, static_cast<int>(k), &beta, c,
                                         static_cast<int>(n)));
}

int64_t MatmulBackwardScratch(int64_t m, int64_t n) { return ColumnSumScratch(m, n, 1); }

void MatmulBackward(cublasHandle_t handle, cudaStream_t stream, const float* dc,
                    const float* a, const float* b, float* da, float* db, float* dbias,
                    int64_t m, int64_t n, int64_t k, float* scratch) {
  if (m == 0 || n == 0 || k == 0) return;  // no gradient to propagate; cuBLAS refuses ld 0
  const float one = 1.0f, zero = 0.0f;
  if (da != nullptr) {  // daᵀ[k, m] = bᵀ[k, n] · dcᵀ[n, m]
    FWP_CUBLAS_CHECK("matmul backward da",
                     cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(k),
                                 static_cast<int>(m), static_cast<int>(n), &one, b,
                                 static_cast<int>(k), dc, static_cast<int>(n), &zero, da,
                                 static_cast<int>(k)));
  }
  if (db != nullptr) {  // dbᵀ[k, n] += aᵀ[k, m] · dc[m, n]
    FWP_CUBLAS_CHECK("matmul backward db",
                     cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(k),
                                 static_cast<int>(n), static_cast<int>(m), &one, a,
                                 static_cast<int>(k), dc, static_cast<int>(n), &one, db,
                                 static_cast<int>(k)));
  }
  if (dbias != nullptr) {
    auto* partials = ColumnSumPartials<1, GradientRows>;
    partials<<<ColumnSumGrid(m, n), 256, 0, stream>>>(GradientRows{dc, n}, m, n, scratch);
    FWP_CUDA_LAUNCHED("matmul backward dbias partials");
    auto* add = AddColumnSumPartials<1>;
    add<<<Blocks(n, 256), 256, 0, stream>>>(scratch, ColumnSumParts(m), n,
                                            ColumnSumOutputs<1>{{dbias}});
    FWP_CUDA_LAUNCHED("matmul backward dbias");
  }
}

}  // namespace fwp::cuda
