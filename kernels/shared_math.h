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

// Sampling (kernels/sampling.h). Greedy: temperature ≤ 0 or top-k 1.
FWP_HD bool GreedySampling(float temperature, int32_t top_k) {
  return temperature <= 0.0f || top_k == 1;
}

// The sampling order as one integer: ascending keys are descending logits,
// and ascending ids among equal logits (−0 equals +0; padding is ~0).
FWP_HD uint64_t SampleOrderKey(float logit, int32_t id) {
  uint32_t bits;
  const float x = logit == 0.0f ? 0.0f : logit;
  __builtin_memcpy(&bits, &x, sizeof bits);
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(~ascending) << 32) | static_cast<uint32_t>(id);
}

// The cut-offs and the draw of a sampled row, given the candidates'
// probabilities p[0, keep) in sampling order (p_i = exp((l_i − l_max)/T)):
// top-p keeps the shortest prefix whose normalised mass reaches top_p, min-p
// those with p_i ≥ min_p · p_0; returns the index of the first candidate whose
// running sum of kept p exceeds uniform · Σ kept p. All in double, in order,
// with no fused multiply-add, so given the same p the CPU and the GPU choose
// alike (their double exp may differ by an ulp, so p itself may not agree).
FWP_HD int64_t ChooseCandidate(const double* p, int64_t keep, float top_p, float min_p,
                               double uniform) {
  double total = 0.0;
  for (int64_t i = 0; i < keep; ++i) total += p[i];
  if (top_p < 1.0f) {
    double mass = 0.0;
    int64_t n = 0;
    while (n < keep) {
      mass += p[n] / total;
      ++n;
      if (mass >= top_p) break;
    }
    keep = n;
  }
  if (min_p > 0.0f) {
    int64_t n = 1;
    while (n < keep && p[n] >= static_cast<double>(min_p) * p[0]) ++n;
    keep = n;
  }
  double kept = 0.0;
  for (int64_t i = 0; i < keep; ++i) kept += p[i];
#if defined(__CUDA_ARCH__)
  double r = __dmul_rn(uniform, kept);
#else
  double r = uniform * kept;
#endif
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0.0) return i;
  }
  return keep - 1;
}

}  // namespace fwp::math
