#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace fwp::cpu {

int32_t Argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

int32_t SampleToken(const float* logits, int64_t vocab,
                    const SamplingParams& params, Rng& rng) {
  if (params.temperature <= 0.0f || params.top_k == 1) {
    return Argmax(logits, vocab);
  }
  // Candidates sorted by logit, highest first (stable: lower id wins ties).
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  int64_t keep = vocab;
  if (params.top_k > 0 && params.top_k < vocab) keep = params.top_k;
  std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(),
                    [&](int32_t a, int32_t b) {
                      return logits[a] > logits[b] ||
                             (logits[a] == logits[b] && a < b);
                    });
  ids.resize(keep);
  const double inv_t = 1.0 / params.temperature;
  const double top = logits[ids[0]];
  std::vector<double> p(keep);
  double total = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    p[i] = std::exp((logits[ids[i]] - top) * inv_t);
    total += p[i];
  }
  if (params.top_p < 1.0f) {
    double mass = 0.0;
    int64_t n = 0;
    while (n < keep) {
      mass += p[n] / total;
      ++n;
      if (mass >= params.top_p) break;
    }
    keep = n;
  }
  if (params.min_p > 0.0f) {
    // p[0] is the largest; keep tokens with p ≥ min_p · p_max.
    int64_t n = 1;
    while (n < keep && p[n] >= params.min_p * p[0]) ++n;
    keep = n;
  }
  double kept = 0.0;
  for (int64_t i = 0; i < keep; ++i) kept += p[i];
  double r = rng.Uniform() * kept;
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0.0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace fwp::cpu
