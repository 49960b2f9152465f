#include "train/scoring.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kernels/random.h"
#include "model/weights.h"

namespace fwp {
namespace {

Config SmallConfig() {
  return {.vocab_size = 30, .d_model = 16, .n_layers = 2, .n_heads = 2, .d_head = 8, .d_ff = 32};
}

std::vector<int32_t> Tokens(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& v : t) v = static_cast<int32_t>(rng.Next() % 30);
  return t;
}

// Σ −log softmax(logits)[next] in float64, from Prefill's logits (the
// inference form: another code path than the scorers' training form).
double PrefillNats(Model& model, const std::vector<int32_t>& tokens, int64_t first, int64_t n,
                   StatePool& pool) {
  const int64_t V = model.config().vocab_size;
  std::vector<float> logits(n * V);
  const int32_t slot = 0;
  EXPECT_TRUE(model.Prefill(pool, {&slot, 1}, absl::MakeConstSpan(tokens).subspan(first, n), true,
                            logits.data()).ok());
  double nats = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits.data() + i * V;
    double max = row[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) max = std::max<double>(max, row[v]);
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - max);
    nats += max + std::log(sum) - row[tokens[first + i + 1]];
  }
  return nats;
}

TEST(Scoring, AStreamIsScoredAsPrefillCarriedThroughoutWhateverThePiece) {
  auto backend = MakeCpuBackend();
  const Config config = SmallConfig();
  auto model = Model::Create(*backend, config, RandomWeights(config, 4, 0.3f));
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> tokens = Tokens(301, 1);
  auto pool = (*model)->NewStatePool(1);
  ASSERT_TRUE(pool.ok());
  const double want = PrefillNats(**model, tokens, 0, 300, **pool) / 300;
  for (int64_t piece : {1, 7, 64, 512}) {
    auto got = ScoreStream(**model, tokens, piece);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->count, 300);
    EXPECT_NEAR(got->mean, want, 1e-5 * want) << "piece " << piece;
  }
  // The first 100 predictions only.
  (*pool)->Reset(0);
  const double first = PrefillNats(**model, tokens, 0, 100, **pool) / 100;
  auto some = ScoreStream(**model, tokens, 64, 100);
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(some->count, 100);
  EXPECT_NEAR(some->mean, first, 1e-5 * first);
  EXPECT_FALSE(ScoreStream(**model, {tokens.data(), 1}).ok());
}

TEST(Scoring, WindowsStartFromEmptyStatesWhateverTheBatch) {
  auto backend = MakeCpuBackend();
  const Config config = SmallConfig();
  auto model = Model::Create(*backend, config, RandomWeights(config, 4, 0.3f));
  ASSERT_TRUE(model.ok());
  const std::vector<int32_t> tokens = Tokens(100, 2);  // 9 windows of 11, one token left over
  double nats = 0;
  for (int64_t w = 0; w < 9; ++w) {
    auto pool = (*model)->NewStatePool(1);
    nats += PrefillNats(**model, tokens, w * 11, 11, **pool);
  }
  for (int64_t batch : {1, 4, 9, 20}) {
    auto got = ScoreWindows(**model, tokens, 11, batch);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->count, 99);
    EXPECT_NEAR(got->mean, nats / 99, 1e-5 * nats / 99) << "batch " << batch;
  }
  auto three = ScoreWindows(**model, tokens, 11, 2, 3);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(three->count, 33);
  auto short_split = ScoreWindows(**model, tokens, 100, 1);
  ASSERT_FALSE(short_split.ok());
  EXPECT_NE(short_split.status().message().find("fewer than one window"), std::string::npos);
}

}  // namespace
}  // namespace fwp
