// The model in its three forms (parallel, chunked prefill, recurrent step)
// for every update rule × feature map, batching, state size, model files.
#include "model/model.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "model/model_dir.h"
#include "tests/reference.h"
#include "tests/test_tokenizer.h"

namespace fwp {
namespace {

using testing::RelativeError;

Config TinyConfig(const FastWeightSpec& attn) {
  Config c;
  c.vocab_size = 97;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = attn.heads;
  c.d_head = attn.d_head;
  c.d_ff = 64;
  c.update = attn.update;
  c.feature_map = attn.phi;
  c.favor_seed = 3;
  c.attention_normalizer = attn.attention_normalizer;
  return c;
}

std::string Name(const Config& c) {
  return absl::StrCat(UpdateRuleName(c.update), "+", FeatureMapName(c.feature_map.kind),
                      c.attention_normalizer ? "+normaliser" : "",
                      c.positions == Positions::kSinusoidal ? "+sinusoidal" : "");
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng.Next() % vocab);
  return t;
}

struct FormRun {
  std::vector<float> logits;  // [time, vocab]
  std::vector<float> state;   // the final state
};

// The parallel form: the whole sequence in one call and one chunk.
FormRun Parallel(Model& model, const std::vector<int32_t>& tokens) {
  auto pool = model.NewStatePool(1);
  const int32_t slot = 0;
  FormRun run;
  run.logits.resize(tokens.size() * model.config().vocab_size);
  model.set_chunk_size(tokens.size());
  EXPECT_TRUE(model.Prefill(**pool, {&slot, 1}, tokens, true, run.logits.data()).ok());
  model.set_chunk_size(64);
  run.state.resize((*pool)->slot_bytes() / 4);
  (*pool)->CopyToHost(0, run.state.data());
  return run;
}

// The chunked form: calls of `piece` tokens each.
FormRun Chunked(Model& model, const std::vector<int32_t>& tokens, size_t piece) {
  auto pool = model.NewStatePool(3);
  const int32_t slot = 2;
  const int64_t V = model.config().vocab_size;
  FormRun run;
  run.logits.resize(tokens.size() * V);
  for (size_t t0 = 0; t0 < tokens.size(); t0 += piece) {
    const size_t n = std::min(piece, tokens.size() - t0);
    EXPECT_TRUE(model
                    .Prefill(**pool, {&slot, 1}, absl::MakeConstSpan(tokens).subspan(t0, n),
                             true, run.logits.data() + t0 * V)
                    .ok());
  }
  EXPECT_EQ((*pool)->position(slot), static_cast<int64_t>(tokens.size()));
  run.state.resize((*pool)->slot_bytes() / 4);
  (*pool)->CopyToHost(slot, run.state.data());
  return run;
}

// The recurrent form: one Step per token.
FormRun Recurrent(Model& model, const std::vector<int32_t>& tokens) {
  auto pool = model.NewStatePool(2);
  const int32_t slot = 1;
  const int64_t V = model.config().vocab_size;
  FormRun run;
  run.logits.resize(tokens.size() * V);
  for (size_t t = 0; t < tokens.size(); ++t) {
    EXPECT_TRUE(model.Step(**pool, {&slot, 1}, {&tokens[t], 1}, run.logits.data() + t * V).ok());
  }
  run.state.resize((*pool)->slot_bytes() / 4);
  (*pool)->CopyToHost(slot, run.state.data());
  return run;
}

TEST(Model, ParallelChunkedAndRecurrentFormsAgreeForEveryVariant) {
  auto backend = MakeCpuBackend();
  const auto tokens = RandomTokens(300, 97, 99);
  double worst = 0.0;  // reported, so the margin under the bound is visible
  auto check = [&](const std::vector<float>& got, const std::vector<float>& want) {
    const double e = RelativeError(got, want);
    worst = std::max(worst, e);
    return e;
  };
  for (const FastWeightSpec& attn : testing::AllAttentionVariants(2, 16)) {
    for (Positions positions : {Positions::kNone, Positions::kSinusoidal}) {
      if (positions == Positions::kSinusoidal && attn.update == UpdateRule::kSum) continue;
      Config config = TinyConfig(attn);
      config.positions = positions;
      SCOPED_TRACE(Name(config));
      // Identity keys are not normalised: keep β‖k‖² < 2 so the delta rule's
      // recurrence is stable (otherwise every form diverges, in agreement).
      const float init_std = attn.phi.kind == FeatureMapKind::kIdentity ? 0.05f : 0.2f;
      auto model = Model::Create(*backend, config, RandomWeights(config, 7, init_std));
      ASSERT_TRUE(model.ok()) << model.status();
      const FormRun parallel = Parallel(**model, tokens);
      for (float x : parallel.logits) ASSERT_TRUE(std::isfinite(x));
      const FormRun recurrent = Recurrent(**model, tokens);
      EXPECT_LT(check(recurrent.logits, parallel.logits), 1e-4) << "recurrent";
      EXPECT_LT(check(recurrent.state, parallel.state), 1e-4) << "recurrent state";
      for (size_t piece : {1, 7, 64}) {
        const FormRun chunked = Chunked(**model, tokens, piece);
        EXPECT_LT(check(chunked.logits, parallel.logits), 1e-4) << "chunks of " << piece;
        EXPECT_LT(check(chunked.state, parallel.state), 1e-4) << "chunks of " << piece;
      }
    }
  }
  std::printf("worst relative difference between forms: %.3g\n", worst);
}

TEST(Model, AStepGivesTheSameBitsAloneOrAmongOtherSessions) {
  auto backend = MakeCpuBackend();
  FastWeightSpec attn = testing::AllAttentionVariants(2, 16)[0];  // delta + dpfp
  const Config config = TinyConfig(attn);
  auto model = Model::Create(*backend, config, RandomWeights(config, 5, 0.2f));
  ASSERT_TRUE(model.ok());
  const int64_t V = config.vocab_size, sessions = 16, steps = 20;
  const auto tokens = RandomTokens(sessions * steps, V, 4);  // [steps, sessions]
  // All 16 sessions stepped together, in a shuffled slot order.
  auto together = (*model)->NewStatePool(sessions);
  std::vector<int32_t> slots(sessions);
  for (int i = 0; i < sessions; ++i) slots[i] = (i * 7) % sessions;
  std::vector<float> batch_logits(sessions * V), alone_logits(V);
  auto alone = (*model)->NewStatePool(1);
  const int32_t only = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int32_t* step_tokens = &tokens[s * sessions];
    ASSERT_TRUE((*model)->Step(**together, slots, {step_tokens, size_t(sessions)},
                               batch_logits.data()).ok());
    // Session 5 on its own.
    ASSERT_TRUE((*model)->Step(**alone, {&only, 1}, {&step_tokens[5], 1}, alone_logits.data()).ok());
    ASSERT_EQ(0, std::memcmp(alone_logits.data(), batch_logits.data() + 5 * V, V * 4))
        << "step " << s;
  }
}

// StepAndSample draws each session's next token from the same logits Step
// returns, under the penalties given, and copies the asked-for rows' logits
// bit for bit (as the step gave them, whatever the penalties).
TEST(Model, StepAndSampleDrawsFromTheLogitsStepGives) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig(testing::AllAttentionVariants(2, 16)[0]);
  auto model = Model::Create(*backend, config, RandomWeights(config, 6, 0.5f));
  ASSERT_TRUE(model.ok());
  const int64_t V = config.vocab_size, sessions = 12;
  auto a = (*model)->NewStatePool(sessions);
  auto b = (*model)->NewStatePool(sessions);
  std::vector<int32_t> slots(sessions);
  for (int i = 0; i < sessions; ++i) slots[i] = (i * 5) % sessions;
  Rng rng(3);
  const auto batch = testing::RandomSamplingBatch(sessions, V, rng);  // its parameters and draws
  std::vector<int32_t> tokens = RandomTokens(sessions, V, 8);
  const std::vector<int32_t> logits_rows = {1, 2, 3, 7, 11, 4};  // runs and singles
  std::vector<float> all(sessions * V), some(logits_rows.size() * V);
  int64_t penalised_draws = 0;
  for (int step = 0; step < 5; ++step) {
    ASSERT_TRUE((*model)->Step(**a, slots, tokens, all.data()).ok());
    std::vector<int32_t> next(sessions, -1);
    const auto penalties = testing::RandomPenalties(sessions, V, rng);
    ASSERT_TRUE((*model)->StepAndSample(**b, slots, tokens, batch.sampling, next.data(),
                                        logits_rows, some.data(), penalties).ok());
    std::vector<float> penalised = all;
    cpu::ApplyPenalties(penalised.data(), V, penalties.data(),
                        static_cast<int64_t>(penalties.size()));
    for (int64_t i = 0; i < sessions; ++i) {
      const RowSampling& row = batch.sampling[i];
      EXPECT_EQ(next[i], cpu::SampleWithDraw(&penalised[i * V], V, row.params, row.uniform))
          << "session " << i << ", step " << step;
      penalised_draws += next[i] != cpu::SampleWithDraw(&all[i * V], V, row.params, row.uniform);
    }
    for (size_t j = 0; j < logits_rows.size(); ++j) {
      EXPECT_EQ(0, std::memcmp(&some[j * V], &all[logits_rows[j] * V], V * sizeof(float)));
    }
    tokens = next;  // feed the drawn tokens on
  }
  EXPECT_GT(penalised_draws, 0);  // the penalties moved some draws
  const int32_t bad_row = sessions;
  std::vector<int32_t> next(sessions);
  EXPECT_FALSE((*model)->StepAndSample(**b, slots, tokens, batch.sampling, next.data(),
                                       {&bad_row, 1}, some.data()).ok());
  const LogitPenalty bad_token{0, static_cast<int32_t>(V), 1.5f, 0, 0.0f, 0.0f};
  EXPECT_FALSE((*model)->StepAndSample(**b, slots, tokens, batch.sampling, next.data(), {},
                                       some.data(), {&bad_token, 1}).ok());
}

// Penalties taken from a table in backend memory draw what their lists draw,
// and table rows outside the batch or the table are refused.
TEST(Model, StepAndSampleTakesPenaltiesFromATable) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig(testing::AllAttentionVariants(2, 16)[0]);
  auto model = Model::Create(*backend, config, RandomWeights(config, 6, 0.5f));
  ASSERT_TRUE(model.ok());
  const int64_t V = config.vocab_size, sessions = 12, table_rows = 15;
  auto a = (*model)->NewStatePool(sessions);
  auto b = (*model)->NewStatePool(sessions);
  std::vector<int32_t> slots(sessions);
  for (int i = 0; i < sessions; ++i) slots[i] = (i * 5) % sessions;
  Rng rng(4);
  const auto batch = testing::RandomSamplingBatch(sessions, V, rng);
  std::vector<int32_t> tokens = RandomTokens(sessions, V, 9);
  auto table = Buffer::Allocate(*backend, table_rows * V * sizeof(int32_t));
  ASSERT_TRUE(table.ok());
  const auto* counts = static_cast<const int32_t*>(table->data());
  int64_t penalised_draws = 0;
  for (int step = 0; step < 5; ++step) {
    std::vector<float> all(sessions * V);
    ASSERT_TRUE((*model)->Step(**a, slots, tokens, all.data()).ok());
    const auto c = testing::RandomPenaltyTable(sessions, table_rows, V, rng);
    backend->CopyToDevice(table->data(), c.table.data(), c.table.size() * sizeof(int32_t));
    std::vector<int32_t> next(sessions, -1);
    ASSERT_TRUE((*model)->StepAndSample(**b, slots, tokens, batch.sampling, next.data(), {},
                                        nullptr, {}, {counts, table_rows, c.rows}).ok());
    std::vector<float> penalised = all;
    cpu::ApplyPenalties(penalised.data(), V, c.list.data(), static_cast<int64_t>(c.list.size()));
    for (int64_t i = 0; i < sessions; ++i) {
      const RowSampling& row = batch.sampling[i];
      EXPECT_EQ(next[i], cpu::SampleWithDraw(&penalised[i * V], V, row.params, row.uniform))
          << "session " << i << ", step " << step;
      penalised_draws += next[i] != cpu::SampleWithDraw(&all[i * V], V, row.params, row.uniform);
    }
    tokens = next;
  }
  EXPECT_GT(penalised_draws, 0);
  std::vector<int32_t> next(sessions);
  for (const PenaltyRow& bad : {PenaltyRow{static_cast<int32_t>(sessions), 0},
                                PenaltyRow{0, static_cast<int32_t>(table_rows)},
                                PenaltyRow{0, -1}}) {
    EXPECT_FALSE((*model)->StepAndSample(**b, slots, tokens, batch.sampling, next.data(), {},
                                         nullptr, {}, {counts, table_rows, {&bad, 1}}).ok())
        << "row " << bad.row << ", table row " << bad.table_row;
  }
  const PenaltyRow twice[] = {{1, 2}, {1, 3}};
  EXPECT_FALSE((*model)->StepAndSample(**b, slots, tokens, batch.sampling, next.data(), {},
                                       nullptr, {}, {counts, table_rows, twice}).ok());
}

TEST(Model, StateBytesAreFixedByTheConfig) {
  auto backend = MakeCpuBackend();
  Config c = TinyConfig(testing::AllAttentionVariants(4, 16)[0]);
  c.feature_map.nu = 3;  // d_φ = 2·16·3 = 96
  EXPECT_EQ(StateLayout::For(c).SlotBytes(), 2 * 4 * 96 * 16 * 4);
  c.update = UpdateRule::kSum;
  c.attention_normalizer = true;  // adds z [layers, heads, d_φ]
  EXPECT_EQ(StateLayout::For(c).SlotBytes(), 2 * 4 * 96 * 16 * 4 + 2 * 4 * 96 * 4);
  auto model = Model::Create(*backend, c, RandomWeights(c, 1));
  ASSERT_TRUE(model.ok());
  auto pool = (*model)->NewStatePool(3);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*pool)->slot_bytes(), StateLayout::For(c).SlotBytes());
  // Feeding tokens does not grow it.
  const int32_t slot = 1;
  std::vector<float> logits(c.vocab_size);
  const auto tokens = RandomTokens(500, c.vocab_size, 1);
  ASSERT_TRUE((*model)->Prefill(**pool, {&slot, 1}, tokens, false, logits.data()).ok());
  EXPECT_EQ((*pool)->slot_bytes(), StateLayout::For(c).SlotBytes());
  EXPECT_EQ((*pool)->position(slot), 500);
}

TEST(Model, BadTokensAndSlotsAreRefused) {
  auto backend = MakeCpuBackend();
  const Config c = TinyConfig(testing::AllAttentionVariants(2, 8)[0]);
  auto model = Model::Create(*backend, c, RandomWeights(c, 1));
  ASSERT_TRUE(model.ok());
  auto pool = (*model)->NewStatePool(2);
  std::vector<float> logits(2 * c.vocab_size);
  const int32_t bad_token = 97, slot = 0, bad_slot = 2;
  auto status = (*model)->Step(**pool, {&slot, 1}, {&bad_token, 1}, logits.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("outside the vocabulary"), std::string::npos);
  const int32_t token = 1;
  status = (*model)->Step(**pool, {&bad_slot, 1}, {&token, 1}, logits.data());
  EXPECT_NE(status.message().find("outside the pool"), std::string::npos);
  const int32_t twice[] = {1, 1}, two_tokens[] = {1, 2};
  status = (*model)->Step(**pool, twice, two_tokens, logits.data());
  EXPECT_NE(status.message().find("given twice"), std::string::npos);
  EXPECT_EQ((*pool)->position(0) + (*pool)->position(1), 0);  // nothing ran
}

TEST(ModelDir, WritesAndLoadsAsOneUnit) {
  auto backend = MakeCpuBackend();
  Config c = TinyConfig(testing::AllAttentionVariants(2, 8)[0]);
  c.vocab_size = 320;
  const HostWeights weights = RandomWeights(c, 3, 0.2f);
  const std::string dir = ::testing::TempDir() + "fwp_model_dir";
  ASSERT_TRUE(WriteModelDir(dir, c, weights, testing::TestTokenizerPath()).ok());
  auto loaded = LoadModelDir(dir, *backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->config.ToJson(), c.ToJson());
  auto direct = Model::Create(*backend, c, weights);
  ASSERT_TRUE(direct.ok());
  const auto tokens = loaded->tokenizer->Encode("The delta rule corrects the memory.");
  EXPECT_EQ(Parallel(*loaded->model, tokens).logits, Parallel(**direct, tokens).logits);

  // A tokenizer larger than the model's vocabulary is refused.
  Config small = c;
  small.vocab_size = 100;
  ASSERT_TRUE(WriteModelDir(dir, small, RandomWeights(small, 3), "").ok());
  auto refused = LoadModelDir(dir, *backend);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("320 pieces"), std::string::npos);
  EXPECT_FALSE(LoadModelDir(dir + "_missing", *backend).ok());
}

}  // namespace
}  // namespace fwp
