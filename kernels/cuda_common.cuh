// Shared CUDA plumbing: error checks and block-wide reductions.
//
// A failed kernel launch or an error from a call that cannot fail for a
// correct program aborts with the op, file and line (the process cannot
// recover a poisoned context); allocation failures are returned as an
// absl::Status by the backend instead (see cuda_backend.cu).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

namespace fwp::cuda {

[[noreturn]] inline void Die(const char* what, const char* detail, const char* file, int line) {
  std::fprintf(stderr, "fwp: CUDA failure in %s: %s (%s:%d)\n", what, detail, file, line);
  std::abort();
}

#define FWP_CUDA_CHECK(what, expr)                                                   \
  do {                                                                               \
    cudaError_t fwp_err_ = (expr);                                                   \
    if (fwp_err_ != cudaSuccess) {                                                   \
      ::fwp::cuda::Die(what, cudaGetErrorString(fwp_err_), __FILE__, __LINE__);      \
    }                                                                                \
  } while (0)

// After a launch: the launch itself must have been accepted.
#define FWP_CUDA_LAUNCHED(what) FWP_CUDA_CHECK(what, cudaGetLastError())

#define FWP_CUBLAS_CHECK(what, expr)                                                 \
  do {                                                                               \
    cublasStatus_t fwp_st_ = (expr);                                                 \
    if (fwp_st_ != CUBLAS_STATUS_SUCCESS) {                                          \
      ::fwp::cuda::Die(what, cublasGetStatusString(fwp_st_), __FILE__, __LINE__);    \
    }                                                                                \
  } while (0)

inline int Blocks(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds
// ≥ 32 floats of shared memory; blockDim.x is a multiple of 32. Ends with a
// barrier, so scratch may be reused right after.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  v = WarpSum(v);
  __syncthreads();
  return v;
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  v = WarpMax(v);
  __syncthreads();
  return v;
}

}  // namespace fwp::cuda
