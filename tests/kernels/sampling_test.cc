#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/shared_math.h"
#include "tests/reference.h"

namespace fwp {
namespace {

// The integer sort key the GPU sampler sorts by orders candidates exactly as
// the definition does: higher logit first, lower id first among equals.
TEST(Sampling, OrderKeysSortLikeTheDefinition) {
  Rng rng(5);
  std::vector<float> logits = testing::RandomVector(5000, rng, 10.0);
  for (size_t i = 0; i < logits.size(); i += 5) logits[i] = logits[i / 3];  // ties
  logits[10] = 0.0f;
  logits[11] = -0.0f;
  logits[12] = -1e-30f;
  logits[13] = 1e-30f;
  logits[14] = -3e38f;
  std::vector<int32_t> by_comparator(logits.size());
  std::iota(by_comparator.begin(), by_comparator.end(), 0);
  std::sort(by_comparator.begin(), by_comparator.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<uint64_t> keys(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    keys[i] = math::SampleOrderKey(logits[i], static_cast<int32_t>(i));
  }
  std::sort(keys.begin(), keys.end());
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(static_cast<int32_t>(keys[i] & 0xffffffffu), by_comparator[i]) << "at rank " << i;
  }
}

// The definition written out plainly (comparator sort, loops in order), for
// the sampler's fast paths (radix sort, partial sort) to be held to.
int32_t ReferenceDraw(const float* logits, int64_t vocab, const SamplingParams& p, double u) {
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  if (p.greedy()) {
    return *std::min_element(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
  }
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = p.top_k > 0 && p.top_k < vocab ? p.top_k : vocab;
  std::vector<double> q(keep);
  for (int64_t i = 0; i < keep; ++i) {
    q[i] = std::exp((logits[ids[i]] - static_cast<double>(logits[ids[0]])) * (1.0 / p.temperature));
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += q[i];
  if (p.top_p < 1.0f) {
    double mass = 0;
    int64_t n = 0;
    while (n < keep) {
      mass += q[n] / total;
      ++n;
      if (mass >= p.top_p) break;
    }
    keep = n;
  }
  if (p.min_p > 0.0f) {
    int64_t n = 1;
    while (n < keep && q[n] >= static_cast<double>(p.min_p) * q[0]) ++n;
    keep = n;
  }
  double kept = 0;
  for (int64_t i = 0; i < keep; ++i) kept += q[i];
  double r = u * kept;
  for (int64_t i = 0; i < keep; ++i) {
    r -= q[i];
    if (r < 0) return ids[i];
  }
  return ids[keep - 1];
}

TEST(Sampling, FastPathsDrawWhatTheDefinitionDraws) {
  Rng rng(17);
  for (const int64_t vocab : {int64_t{3}, int64_t{100}, int64_t{5000}}) {
    auto batch = testing::RandomSamplingBatch(120, vocab, rng);
    for (int64_t r = 0; r < batch.rows; ++r) {
      const RowSampling& row = batch.sampling[r];
      const float* l = &batch.logits[r * vocab];
      ASSERT_EQ(cpu::SampleWithDraw(l, vocab, row.params, row.uniform),
                ReferenceDraw(l, vocab, row.params, row.uniform))
          << "vocab " << vocab << ", row " << r;
    }
  }
}

// A batched draw (each row's parameters and uniform) picks what the
// per-request sampler picks from the same Rng, for every kind of row.
TEST(Sampling, BatchedRowsDrawLikeTheRequestSampler) {
  Rng rng(11);
  const auto batch = testing::RandomSamplingBatch(60, 700, rng);
  std::vector<int32_t> tokens(batch.rows, -1);
  cpu::SampleRows(batch.logits.data(), batch.rows, batch.vocab, batch.sampling.data(),
                  tokens.data());
  int sampled_away_from_argmax = 0;
  for (int64_t r = 0; r < batch.rows; ++r) {
    const float* row = &batch.logits[r * batch.vocab];
    const SamplingParams& p = batch.sampling[r].params;
    const int32_t expected =
        p.greedy() ? cpu::Argmax(row, batch.vocab)
                   : cpu::SampleWithDraw(row, batch.vocab, p, batch.sampling[r].uniform);
    EXPECT_EQ(tokens[r], expected) << "row " << r;
    sampled_away_from_argmax += tokens[r] != cpu::Argmax(row, batch.vocab);
  }
  EXPECT_GT(sampled_away_from_argmax, 10);  // the draws are not all greedy
  // SampleToken is Argmax or SampleWithDraw with the Rng's next uniform.
  for (int seed = 0; seed < 20; ++seed) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_p = 0.95f;
    Rng a(seed), b(seed);
    EXPECT_EQ(cpu::SampleToken(batch.logits.data(), batch.vocab, p, a),
              cpu::SampleWithDraw(batch.logits.data(), batch.vocab, p, b.Uniform()));
  }
}

TEST(Sampling, GreedyTakesTheLargestLogitAndTheLowestIdOnTies) {
  Rng rng(1);
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(cpu::SampleToken(logits.data(), 4, SamplingParams{}, rng), 1);
  // NaNs are passed over, except at index 0 (the GPU sampler follows this).
  const float nan = std::nanf("");
  const std::vector<float> with_nan = {0.5f, nan, 3.0f, nan};
  EXPECT_EQ(cpu::Argmax(with_nan.data(), 4), 2);
  const std::vector<float> nan_first = {nan, 1.0f, 3.0f};
  EXPECT_EQ(cpu::Argmax(nan_first.data(), 3), 0);
}

TEST(Sampling, TemperatureDrawsFollowTheSoftmax) {
  Rng rng(7);
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  SamplingParams params;
  params.temperature = 1.0f;
  int ones = 0;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) ones += cpu::SampleToken(logits.data(), 2, params, rng);
  EXPECT_NEAR(ones / double(draws), 0.75, 0.015);
}

TEST(Sampling, TopKTopPAndMinPRestrictTheCandidates) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  auto drawn = [&](SamplingParams params) {
    Rng rng(3);
    std::vector<int> seen(4, 0);
    for (int i = 0; i < 4000; ++i) ++seen[cpu::SampleToken(logits.data(), 4, params, rng)];
    return seen;
  };
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  auto seen = drawn(p);
  EXPECT_GT(seen[1], 0);
  EXPECT_EQ(seen[2] + seen[3], 0);
  p = SamplingParams{1.0f, 0, 0.75f, 0.0f};  // 0.5 + 0.3 ≥ 0.75
  seen = drawn(p);
  EXPECT_GT(seen[1], 0);
  EXPECT_EQ(seen[2] + seen[3], 0);
  p = SamplingParams{1.0f, 0, 1.0f, 0.25f};  // keep p ≥ 0.125
  seen = drawn(p);
  EXPECT_GT(seen[2], 0);
  EXPECT_EQ(seen[3], 0);
}

TEST(Sampling, TheSameSeedDrawsTheSameTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  SamplingParams params{0.8f, 40, 0.95f, 0.0f};
  Rng a(42), b(42);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(cpu::SampleToken(logits.data(), 100, params, a),
              cpu::SampleToken(logits.data(), 100, params, b));
  }
}

}  // namespace
}  // namespace fwp
