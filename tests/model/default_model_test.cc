// The shipped default model loads as a unit and is the trained one: it
// predicts plain English far better than chance (ln 8192 ≈ 9.0 nats).
#include <gtest/gtest.h>

#include <cmath>

#include "model/model_dir.h"

namespace fwp {
namespace {

TEST(DefaultModel, LoadsAndPredictsEnglish) {
  auto backend = MakeCpuBackend();
  auto loaded = LoadModelDir(FWP_SOURCE_DIR "/models/default", *backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->config.update, UpdateRule::kDelta);
  EXPECT_EQ(loaded->config.feature_map.kind, FeatureMapKind::kDpfp);
  const std::string text =
      "The jury said it did find that many of the state's laws were outmoded. "
      "The committee will meet again next week to consider the report of the city council.";
  std::vector<int32_t> tokens = loaded->tokenizer->Encode(text);
  ASSERT_GT(tokens.size(), 20u);
  const int64_t V = loaded->config.vocab_size;
  auto pool = loaded->model->NewStatePool(1);
  ASSERT_TRUE(pool.ok());
  const int32_t slot = 0;
  std::vector<float> logits(tokens.size() * V);
  ASSERT_TRUE(loaded->model->Prefill(**pool, {&slot, 1}, tokens, true, logits.data()).ok());
  double nats = 0;
  for (size_t t = 0; t + 1 < tokens.size(); ++t) {
    const float* row = &logits[t * V];
    double max = row[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) max = std::max<double>(max, row[v]);
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - max);
    nats += max + std::log(sum) - row[tokens[t + 1]];
  }
  const double loss = nats / (tokens.size() - 1);
  RecordProperty("loss", std::to_string(loss));
  EXPECT_LT(loss, 6.0) << "perplexity " << std::exp(loss);
}

}  // namespace
}  // namespace fwp
