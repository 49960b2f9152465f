// Scalar math shared by the CPU ops and the CUDA kernels, so that both
// evaluate the same expressions (and the CPU tests cover them).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FWP_HD __host__ __device__ __forceinline__
#else
#define FWP_HD inline
#endif

namespace fwp::math {

FWP_HD float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
FWP_HD float Relu(float x) { return x > 0.0f ? x : 0.0f; }

// elu(x) + 1 and its derivative.
FWP_HD float Elu1(float x) { return x > 0.0f ? x + 1.0f : expf(x); }
FWP_HD float Elu1Grad(float x) { return x > 0.0f ? 1.0f : expf(x); }

// GELU, tanh form (GPT-2), and its derivative.
constexpr float kSqrt2OverPi = 0.7978845608028654f;
FWP_HD float Gelu(float x) {
  const float inner = kSqrt2OverPi * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}
FWP_HD float GeluGrad(float x) {
  const float inner = kSqrt2OverPi * (x + 0.044715f * x * x * x);
  const float t = tanhf(inner);
  const float dinner = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
}

// DPFP: r = [relu(x), relu(−x)] ∈ R^{2d}; element i of r.
FWP_HD float DpfpR(const float* x, int64_t d, int64_t i) {
  return i < d ? Relu(x[i]) : Relu(-x[i - d]);
}
// roll(r, j)_i = r_{(i − j) mod 2d}: the source index.
FWP_HD int64_t RollSource(int64_t i, int64_t j, int64_t two_d) {
  return ((i - j) % two_d + two_d) % two_d;
}

}  // namespace fwp::math
