#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/shared_math.h"
#include "tests/reference.h"

namespace fwp {
namespace {

// The integer key the sampler's radix selection works on orders candidates exactly as
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

// The definition written out plainly (a comparator sort of the candidates,
// prefixes walked in that order), for the sampler's radix selection to be
// held to.
int32_t ReferenceDraw(const float* logits, int64_t vocab, const SamplingParams& p, double u) {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < vocab; ++i) {
    if (!std::isnan(logits[i])) ids.push_back(i);
  }
  if (ids.empty()) return 0;
  const auto before = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  if (p.greedy()) {  // NaN logits are passed over, except at id 0 (cpu::Argmax)
    return std::isnan(logits[0]) ? 0 : *std::min_element(ids.begin(), ids.end(), before);
  }
  std::sort(ids.begin(), ids.end(), before);
  const int bits = math::WeightBits(vocab);
  std::vector<uint64_t> w(vocab, 0);
  for (int32_t i : ids) {
    w[i] = math::CandidateWeight(logits[i], logits[ids[0]], 1.0 / p.temperature, bits);
  }
  size_t keep = ids.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < keep) keep = p.top_k;
  if (p.top_p < 1.0f) {
    uint64_t total = 0;
    for (size_t n = 0; n < keep; ++n) total += w[ids[n]];
    const uint64_t target = math::TopPTarget(p.top_p, total);
    uint64_t mass = 0;
    size_t n = 0;
    while (n < keep && mass < target) mass += w[ids[n++]];
    keep = n;
  }
  std::vector<int32_t> kept(ids.begin(), ids.begin() + keep);
  std::erase_if(kept, [&](int32_t i) { return w[i] < math::MinPWeight(p.min_p, bits); });
  std::sort(kept.begin(), kept.end());
  uint64_t total = 0;
  for (int32_t i : kept) total += w[i];
  uint64_t r = math::DrawPoint(u, total);
  for (int32_t i : kept) {
    if (r < w[i]) return i;
    r -= w[i];
  }
  ADD_FAILURE() << "the draw fell past the kept weight";
  return -1;
}

// The integer weights are exp to double precision, the top one exactly 2^b.
TEST(Sampling, WeightsAreExpInFixedPoint) {
  const int bits = math::WeightBits(8192);
  EXPECT_EQ(bits, 49);
  EXPECT_EQ(math::WeightBits(8193), 48);
  EXPECT_EQ(math::CandidateWeight(2.5f, 2.5f, 1.0, bits), uint64_t{1} << bits);
  EXPECT_EQ(math::CandidateWeight(INFINITY, INFINITY, 1.0, bits), uint64_t{1} << bits);
  EXPECT_EQ(math::CandidateWeight(std::nanf(""), 1.0f, 1.0, bits), 0u);
  double worst = 0;
  for (double x = -27.0; x <= 0.0; x += 0.0137) {
    const double w = static_cast<double>(math::ExpWeight(x, bits)) / std::ldexp(1.0, bits);
    worst = std::max(worst, std::abs(w - std::exp(x)) / std::exp(x));
  }
  // Flooring to 2^-49 dominates at the bottom of the range: e^-27 · 2^49 ≈ 1055.
  EXPECT_LT(worst, 1e-3);
  for (double x = -10.0; x <= 0.0; x += 0.0137) {
    const double w = static_cast<double>(math::ExpWeight(x, bits)) / std::ldexp(1.0, bits);
    ASSERT_LT(std::abs(w - std::exp(x)), 4e-15) << x;
  }
  EXPECT_EQ(math::ExpWeight(-34.0, bits), 0u);  // e^-34 < 2^-49
  EXPECT_EQ(math::ExpWeight(-2000.0, bits), 0u);
}

// The exact products behind top-p's target and the draw, against 128-bit
// arithmetic.
TEST(Sampling, WideProductsAreExact) {
  Rng rng(3);
  for (int i = 0; i < 10000; ++i) {
    const uint64_t a = rng.Next() >> (rng.Next() % 64), b = rng.Next() >> 2;
    for (int shift : {24, 53, 63}) {
      const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;
      const unsigned __int128 floor = product >> shift;
      if (floor >> 63) continue;
      const bool exact = (product & ((static_cast<unsigned __int128>(1) << shift) - 1)) == 0;
      ASSERT_EQ(math::MulShift(a, b, shift, false), static_cast<uint64_t>(floor));
      ASSERT_EQ(math::MulShift(a, b, shift, true), static_cast<uint64_t>(floor) + !exact);
    }
  }
  EXPECT_EQ(math::TopPTarget(0.5f, 1000), 500u);
  EXPECT_EQ(math::TopPTarget(0.5f, 1001), 501u);
  EXPECT_EQ(math::TopPTarget(0.0f, 1000), 1u);  // the first candidate always stays
  EXPECT_EQ(math::DrawPoint(0.0, 77), 0u);
  EXPECT_EQ(math::DrawPoint(std::nextafter(1.0, 0.0), 77), 76u);
  EXPECT_EQ(math::DrawPoint(0.5, uint64_t{1} << 61), uint64_t{1} << 60);
}

TEST(Sampling, FastPathsDrawWhatTheDefinitionDraws) {
  Rng rng(17);
  for (const int64_t vocab : {int64_t{1}, int64_t{3}, int64_t{100}, int64_t{5000}}) {
    for (int kind = 0; kind < 4; ++kind) {
      auto batch = testing::RandomSamplingBatch(120, vocab, rng);
      testing::ShapeSamplingLogits(batch.logits, kind, rng);
      for (int64_t r = 0; r < batch.rows; ++r) {
        const RowSampling& row = batch.sampling[r];
        const float* l = &batch.logits[r * vocab];
        ASSERT_EQ(cpu::SampleWithDraw(l, vocab, row.params, row.uniform),
                  ReferenceDraw(l, vocab, row.params, row.uniform))
            << "vocab " << vocab << ", kind " << kind << ", row " << r;
      }
    }
  }
}

// Cut-offs inside a group of equal logits keep its lowest ids: top-p 0.45
// (mass 4 + e^-2 + e^-3, so a target of 1.88) keeps two of four ties, each
// half the time; top-k 3 keeps three.
TEST(Sampling, CutOffsInsideEqualLogitsKeepTheLowerIds) {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, 3.0f, 3.0f, 0.0f};
  SamplingParams p{1.0f, 0, 0.45f, 0.0f};
  std::vector<int> seen(6, 0);
  Rng rng(9);
  for (int i = 0; i < 4000; ++i) ++seen[cpu::SampleToken(logits.data(), 6, p, rng)];
  EXPECT_EQ(seen[0] + seen[3] + seen[4] + seen[5], 0);
  EXPECT_NEAR(seen[1] / 4000.0, 0.5, 0.03);
  p = SamplingParams{1.0f, 3, 1.0f, 0.0f};  // top-3: ids 1, 2, 3
  seen.assign(6, 0);
  for (int i = 0; i < 6000; ++i) ++seen[cpu::SampleToken(logits.data(), 6, p, rng)];
  EXPECT_EQ(seen[0] + seen[4] + seen[5], 0);
  for (int id : {1, 2, 3}) EXPECT_NEAR(seen[id] / 6000.0, 1.0 / 3, 0.03) << id;
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

// A penalty table gives each row's logits the bits its LogitPenalty list
// gives them, reading only the rows it names; SetPenaltyCounts fills rows
// from zero to what the list says.
TEST(Sampling, PenaltyTableRowsPenaliseLikeTheirLists) {
  Rng rng(12);
  const int64_t rows = 30, table_rows = 41, vocab = 700;
  const auto c = testing::RandomPenaltyTable(rows, table_rows, vocab, rng);
  const auto batch = testing::RandomSamplingBatch(rows, vocab, rng);
  std::vector<float> by_list = batch.logits, by_table = batch.logits;
  cpu::ApplyPenalties(by_list.data(), vocab, c.list.data(), static_cast<int64_t>(c.list.size()));
  cpu::ApplyPenaltyRows(by_table.data(), vocab, c.table.data(), c.rows.data(),
                        static_cast<int64_t>(c.rows.size()));
  int64_t changed = 0;
  for (size_t i = 0; i < by_list.size(); ++i) {
    ASSERT_EQ(0, std::memcmp(&by_list[i], &by_table[i], sizeof(float))) << "logit " << i;
    changed += by_table[i] != batch.logits[i];
  }
  EXPECT_GT(changed, 1000);
  std::vector<int32_t> filled(table_rows * vocab, 0);
  cpu::SetPenaltyCounts(filled.data(), vocab, c.entries.data(),
                        static_cast<int64_t>(c.entries.size()));
  for (const PenaltyRow& r : c.rows) {
    EXPECT_TRUE(std::equal(filled.begin() + r.table_row * vocab,
                           filled.begin() + (r.table_row + 1) * vocab,
                           c.table.begin() + r.table_row * vocab))
        << "table row " << r.table_row;
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
