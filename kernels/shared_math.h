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

// Double steps rounded one by one, never fused into a multiply-add, so the
// host and the device compute the same bits (host files that use them are
// built with -ffp-contract=off).
FWP_HD double MulRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
FWP_HD double AddRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// A logit under a request's penalties (server/generation.h): the repetition
// penalty divides it when positive and multiplies it otherwise (1: off, or
// the token was not seen), then presence + frequency × count comes off when
// the token is `count` > 0 times in the output. Each step rounded on its
// own, as the host computes it.
FWP_HD float PenalisedLogit(float x, float repetition, int32_t count, float presence,
                            float frequency) {
#if defined(__CUDA_ARCH__)
  if (repetition != 1.0f) x = x > 0.0f ? __fdiv_rn(x, repetition) : __fmul_rn(x, repetition);
  if (count > 0) {
    x = __fsub_rn(x, __fadd_rn(presence, __fmul_rn(frequency, static_cast<float>(count))));
  }
#else
  if (repetition != 1.0f) x = x > 0.0f ? x / repetition : x * repetition;
  if (count > 0) x = x - (presence + frequency * static_cast<float>(count));
#endif
  return x;
}

// A candidate's place in the sampling order as an integer: ascending is
// descending logit (−0 equals +0); NaN comes after every number.
FWP_HD uint32_t SampleOrder(float logit) {
  if (logit != logit) return 0xffffffffu;
  uint32_t bits;
  const float x = logit == 0.0f ? 0.0f : logit;
  __builtin_memcpy(&bits, &x, sizeof bits);
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ascending;
}
// The whole order as one key: ascending ids among equal logits.
FWP_HD uint64_t SampleKey(uint32_t order, int64_t id) {
  return (static_cast<uint64_t>(order) << 32) | static_cast<uint32_t>(id);
}
FWP_HD uint64_t SampleOrderKey(float logit, int32_t id) { return SampleKey(SampleOrder(logit), id); }

// A sampled row's candidates: their orders and weights (null: each weighs 1,
// for counting), and the key limit of the cut-offs made so far.
struct SampleCandidates {
  const uint32_t* order;
  const uint64_t* weight;
  int64_t vocab;
  uint64_t limit;  // only keys ≤ limit take part

  FWP_HD bool In(int64_t i) const { return SampleKey(order[i], i) <= limit; }
  FWP_HD uint64_t Weight(int64_t i) const { return weight ? weight[i] : 1; }
};

// Candidate weights are integers of WeightBits(vocab) fractional bits, so a
// whole vocabulary sums below 2^62 and every sum is exact in any order.
FWP_HD int WeightBits(int64_t vocab) {
  int log2 = 0;
  while ((int64_t{1} << log2) < vocab) ++log2;
  return 62 - log2;
}

FWP_HD uint64_t DoubleBits(double x) {
  uint64_t bits;
  __builtin_memcpy(&bits, &x, sizeof bits);
  return bits;
}

// ⌊exp(x) · 2^bits⌋ for x ≤ 0, by a fixed recipe (Cody–Waite reduction by
// ln 2, Taylor polynomial of degree 13, each step rounded, the scaling and
// flooring done on the integer mantissa), so every backend gets the same
// integer; relative error about 1e-16 against exp. 0 below 2^-bits and for
// NaN. Branch-free, so the CPU's loop over a vocabulary vectorises.
FWP_HD uint64_t ExpWeight(double x, int bits) {
  constexpr double kInvLn2 = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 32 significant bits
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kRound = 6755399441055744.0;  // 1.5 · 2^52
  x = x > -1000.0 ? x : -1000.0;  // NaN too
  const double shifted = AddRn(MulRn(x, kInvLn2), kRound);
  const int64_t k = static_cast<int64_t>(DoubleBits(shifted) - DoubleBits(kRound));  // nearest
  const double kd = AddRn(shifted, -kRound);
  const double r = AddRn(AddRn(x, -MulRn(kd, kLn2Hi)), -MulRn(kd, kLn2Lo));
  // Σ r^n/n!, n ≤ 13, by Estrin's scheme: pairs, then powers r², r⁴, r⁸,
  // so the dependent chain is 8 steps rather than Horner's 26.
  const double r2 = MulRn(r, r), r4 = MulRn(r2, r2), r8 = MulRn(r4, r4);
  const double q0 = AddRn(1.0, r);
  const double q1 = AddRn(0.5, MulRn(r, 1.0 / 6));
  const double q2 = AddRn(1.0 / 24, MulRn(r, 1.0 / 120));
  const double q3 = AddRn(1.0 / 720, MulRn(r, 1.0 / 5040));
  const double q4 = AddRn(1.0 / 40320, MulRn(r, 1.0 / 362880));
  const double q5 = AddRn(1.0 / 3628800, MulRn(r, 1.0 / 39916800));
  const double q6 = AddRn(1.0 / 479001600, MulRn(r, 1.0 / 6227020800.0));
  const double s0 = AddRn(q0, MulRn(q1, r2)), s1 = AddRn(q2, MulRn(q3, r2));
  const double s2 = AddRn(q4, MulRn(q5, r2));
  const double t0 = AddRn(s0, MulRn(s1, r4)), t1 = AddRn(s2, MulRn(q6, r4));
  const double p = AddRn(t0, MulRn(t1, r8));
  // p in [0.7, 1.42] is m · 2^(e − 52) with m its 53-bit mantissa.
  const uint64_t pb = DoubleBits(p);
  const uint64_t m = (pb & ((uint64_t{1} << 52) - 1)) | (uint64_t{1} << 52);
  const int64_t shift = static_cast<int64_t>(pb >> 52) - 1023 - 52 + k + bits;
  const int64_t left = shift > 0 ? shift : 0;  // ≤ 10
  const int64_t right = -shift < 63 ? -shift : 63;  // m < 2^53, so 63 clears it
  return (m << left) >> (right > 0 ? right : 0);
}

// A candidate's weight: ⌊exp((l − l_max)/T) · 2^bits⌋ (inv_t = 1/T); the top
// logit weighs 2^bits exactly (also when it is infinite), NaN weighs 0.
FWP_HD uint64_t CandidateWeight(float logit, float top, double inv_t, int bits) {
  const double x = MulRn(AddRn(static_cast<double>(logit), -static_cast<double>(top)), inv_t);
  const uint64_t w = ExpWeight(x, bits);
  return logit == top ? uint64_t{1} << bits : logit != logit ? 0 : w;
}

// ⌊a·b / 2^shift⌋, rounded up instead when `up`; 0 < shift < 64 and the
// result below 2^64.
FWP_HD uint64_t MulShift(uint64_t a, uint64_t b, int shift, bool up) {
  const uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
  const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
  const uint64_t lo = (mid << 32) | (p00 & 0xffffffffu);
  const uint64_t hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
  const uint64_t floor = (hi << (64 - shift)) | (lo >> shift);
  return floor + (up && (lo & ((uint64_t{1} << shift) - 1)) != 0 ? 1 : 0);
}

// The weight top-p's prefix must reach: ⌈q · total / 2^24⌉ with
// q = ⌊top_p · 2^24⌋, and at least 1 (so the first candidate is kept).
FWP_HD uint64_t TopPTarget(float top_p, uint64_t total) {
  const uint64_t q = top_p >= 1.0f ? (uint64_t{1} << 24)
                     : top_p > 0.0f ? static_cast<uint64_t>(top_p * 16777216.0f)
                                    : 0;
  const uint64_t target = MulShift(q, total, 24, true);
  return target > 0 ? target : 1;
}

// min-p keeps the candidates weighing at least ⌈min_p · 2^bits⌉.
FWP_HD uint64_t MinPWeight(float min_p, int bits) {
  if (!(min_p > 0.0f)) return 0;
  if (min_p >= 1.0f) return uint64_t{1} << bits;
  return static_cast<uint64_t>(ceil(MulRn(static_cast<double>(min_p),
                                          static_cast<double>(uint64_t{1} << bits))));
}

// Where a uniform draw in [0, 1) (53 bits) falls in the kept weight:
// ⌊⌊u · 2^53⌋ · kept / 2^53⌋, below kept.
FWP_HD uint64_t DrawPoint(double uniform, uint64_t kept) {
  const uint64_t u = uniform <= 0.0 ? 0
                     : uniform >= 1.0 ? (uint64_t{1} << 53) - 1
                                      : static_cast<uint64_t>(MulRn(uniform, 9007199254740992.0));
  return MulShift(u, kept, 53, false);
}

}  // namespace fwp::math
