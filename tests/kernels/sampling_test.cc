#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace fwp {
namespace {

TEST(Sampling, GreedyTakesTheLargestLogitAndTheLowestIdOnTies) {
  Rng rng(1);
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(cpu::SampleToken(logits.data(), 4, SamplingParams{}, rng), 1);
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
