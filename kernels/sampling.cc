#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/shared_math.h"
#include "kernels/thread_pool.h"

namespace fwp::cpu {
namespace {

// Sorts sampling-order keys built in id order: a stable LSD radix sort on
// their upper 32 bits (the logit's order), 11 bits per pass, so equal logits
// keep their id order and the result is std::sort's on the whole keys. A pass
// where every key has the same digit is skipped.
void RadixSort(std::vector<uint64_t>& keys) {
  thread_local std::vector<uint64_t> other;
  other.resize(keys.size());
  uint64_t* from = keys.data();
  uint64_t* to = other.data();
  const size_t n = keys.size();
  constexpr int kBits = 11;
  constexpr uint64_t kMask = (uint64_t{1} << kBits) - 1;
  for (int shift = 32; shift < 64; shift += kBits) {
    uint32_t count[(1 << kBits) + 1] = {};
    for (size_t i = 0; i < n; ++i) ++count[((from[i] >> shift) & kMask) + 1];
    if (count[((from[0] >> shift) & kMask) + 1] == n) continue;
    for (int b = 0; b < (1 << kBits); ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < n; ++i) to[count[(from[i] >> shift) & kMask]++] = from[i];
    std::swap(from, to);
  }
  if (from != keys.data()) std::copy(from, from + n, keys.data());
}

}  // namespace

int32_t Argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

int32_t SampleToken(const float* logits, int64_t vocab,
                    const SamplingParams& params, Rng& rng) {
  if (params.greedy()) return Argmax(logits, vocab);
  return SampleWithDraw(logits, vocab, params, rng.Uniform());
}

void SampleRows(const float* logits, int64_t rows, int64_t vocab, const RowSampling* sampling,
                int32_t* tokens) {
  CpuThreadPool().ParallelFor(rows, [&](int64_t i) {
    tokens[i] = SampleWithDraw(logits + i * vocab, vocab, sampling[i].params, sampling[i].uniform);
  });
}

int32_t SampleWithDraw(const float* logits, int64_t vocab, const SamplingParams& params,
                       double uniform) {
  if (params.greedy()) return Argmax(logits, vocab);
  // Candidates in sampling order: highest logit first, lower id among equals.
  std::vector<uint64_t> keys(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    keys[i] = math::SampleOrderKey(logits[i], static_cast<int32_t>(i));
  }
  int64_t keep = vocab;
  if (params.top_k > 0 && params.top_k < vocab) keep = params.top_k;
  if (keep * 8 < vocab) {
    std::partial_sort(keys.begin(), keys.begin() + keep, keys.end());
  } else {
    RadixSort(keys);
  }
  const auto id = [&](int64_t i) { return static_cast<int32_t>(keys[i] & 0xffffffffu); };
  const double inv_t = 1.0 / params.temperature;
  const double top = logits[id(0)];
  std::vector<double> p(keep);
  for (int64_t i = 0; i < keep; ++i) p[i] = std::exp((logits[id(i)] - top) * inv_t);
  return id(math::ChooseCandidate(p.data(), keep, params.top_p, params.min_p, uniform));
}

}  // namespace fwp::cpu
