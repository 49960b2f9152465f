#include "train/retrieval.h"

#include "model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include <tuple>

namespace fwp {
namespace {

RetrievalConfig Task(int setting, int64_t pairs, UpdateRule update, FeatureMapKind phi,
                     int64_t eval_sequences) {
  RetrievalConfig config;
  config.setting = setting;
  config.pairs = pairs;
  config.update = update;
  config.phi.kind = phi;
  config.eval_sequences = eval_sequences;
  return config;
}

// The paper's setting 1 at S = 20: a delta-rule DPFP-1 memory learns the
// pairs (> 90% of queries right) within a small step budget on the CPU.
TEST(Retrieval, DeltaRuleLearnsTwentyPairsOnTheCpu) {
  auto backend = MakeCpuBackend();
  RetrievalConfig config = Task(1, 20, UpdateRule::kDelta, FeatureMapKind::kDpfp, 5);
  config.max_steps = 3000;
  config.target_loss = 0.02;  // stop once it clearly works
  auto task = RetrievalTask::Create(*backend, config);
  ASSERT_TRUE(task.ok()) << task.status();
  auto first = (*task)->Evaluate();
  ASSERT_TRUE(first.ok());
  EXPECT_LT(first->accuracy, 0.3);  // untrained: near chance (1/20)
  auto result = (*task)->Train([](int64_t, const RetrievalEval&) {});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(result->best.accuracy, 0.9) << "after " << result->steps << " steps, loss "
                                        << result->best.loss;
  EXPECT_LT(result->best.loss, 0.1);
}

// --max_seconds ends training at the first evaluation past the limit, saying so.
TEST(Retrieval, ATimeLimitStopsAtTheNextEvaluation) {
  auto backend = MakeCpuBackend();
  RetrievalConfig config = Task(1, 8, UpdateRule::kDelta, FeatureMapKind::kDpfp, 2);
  config.batch = 4;
  config.eval_every = 7;
  config.max_seconds = 1e-9;
  auto task = RetrievalTask::Create(*backend, config);
  ASSERT_TRUE(task.ok()) << task.status();
  int evaluations = 0;
  auto result = (*task)->Train([&](int64_t, const RetrievalEval&) { ++evaluations; });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->steps, 7);
  EXPECT_EQ(evaluations, 1);
  EXPECT_TRUE(result->out_of_time);
}

// The evaluation reads every query from its sequence's final memory; the
// paper's code reruns the sequence per query. Both must score the same
// sequences alike, for the delta rule and for the sum rule's normaliser.
TEST(Retrieval, ReadingTheFinalMemoryEqualsRerunningEachQuery) {
  auto backend = MakeCpuBackend();
  for (const auto& [setting, update, kind] :
       {std::tuple{1, UpdateRule::kDelta, FeatureMapKind::kDpfp},
        std::tuple{2, UpdateRule::kSum, FeatureMapKind::kElu1},
        std::tuple{2, UpdateRule::kDelta, FeatureMapKind::kElu1}}) {
    RetrievalConfig config = Task(setting, 12, update, kind, 4);
    config.seed = 7;
    // Two tasks from one seed stay identical; train both a little so the
    // outputs are far from their initial near-uniform values.
    auto fast = RetrievalTask::Create(*backend, config);
    auto rerun = RetrievalTask::Create(*backend, config);
    ASSERT_TRUE(fast.ok() && rerun.ok());
    for (int i = 0; i < 60; ++i) {
      ASSERT_TRUE((*fast)->TrainStep().ok());
      ASSERT_TRUE((*rerun)->TrainStep().ok());
    }
    auto a = (*fast)->Evaluate();
    auto b = (*rerun)->Evaluate(/*rerun_each_query=*/true);
    ASSERT_TRUE(a.ok() && b.ok());
    SCOPED_TRACE(testing::Message() << "setting " << setting << ", " << UpdateRuleName(update)
                                    << " + " << FeatureMapName(kind));
    EXPECT_GT(b->loss, 0.05);  // not trivially solved: the comparison means something
    EXPECT_NEAR(a->loss, b->loss, 1e-5 * b->loss);
    EXPECT_DOUBLE_EQ(a->accuracy, b->accuracy);
  }
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// fwp-retrieval --save / fwp-eval --retrieval: a saved memory loads back
// with every parameter and its shape, and scores like the trained one; a file
// that does not describe itself consistently is refused by name.
TEST(Retrieval, SavedMemoryLoadsBackAndBadFilesAreRefused) {
  auto backend = MakeCpuBackend();
  const RetrievalConfig config = Task(2, 12, UpdateRule::kDelta, FeatureMapKind::kDpfp, 10);
  auto trained = RetrievalTask::Create(*backend, config);
  ASSERT_TRUE(trained.ok());
  for (int i = 0; i < 400; ++i) ASSERT_TRUE((*trained)->TrainStep().ok());
  const std::string dir = testing::TempDir();
  const std::string path = dir + "/retrieval.safetensors";
  ASSERT_TRUE((*trained)->Save(path).ok());

  auto loaded = RetrievalTask::Load(*backend, path, 99);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config().setting, 2);
  EXPECT_EQ((*loaded)->config().pairs, 12);
  EXPECT_EQ((*loaded)->steps(), 400);
  // Saving the loaded memory writes the same bytes: nothing was lost.
  const std::string again = dir + "/retrieval_again.safetensors";
  ASSERT_TRUE((*loaded)->Save(again).ok());
  EXPECT_EQ(ReadAll(path), ReadAll(again));
  // It scores as trained on fresh sequences; a fresh memory does not.
  (*loaded)->set_eval_sequences(20);
  auto eval = (*loaded)->Evaluate();
  ASSERT_TRUE(eval.ok());
  auto fresh = RetrievalTask::Create(*backend, config);
  auto fresh_eval = (*fresh)->Evaluate();
  EXPECT_GT(eval->accuracy, 0.8);
  EXPECT_LT(fresh_eval->accuracy, 0.3);

  // Another S in the metadata than the tensors were made for.
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, info] : (*file)->tensors()) values.push_back(*(*file)->ReadF32(name));
  size_t i = 0;
  for (const auto& [name, info] : (*file)->tensors()) {
    tensors.push_back({name, DType::kF32, info.shape,
                       absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(values[i].data()),
                                           values[i].size() * sizeof(float))});
    ++i;
  }
  auto metadata = (*file)->metadata();
  auto refused = [&](const std::map<std::string, std::string>& meta,
                     const std::vector<TensorToWrite>& ts) {
    const std::string bad = dir + "/bad.safetensors";
    EXPECT_TRUE(WriteSafetensors(bad, ts, meta).ok());
    auto status = RetrievalTask::Load(*backend, bad, 1).status();
    EXPECT_FALSE(status.ok());
    return std::string(status.message());
  };
  auto meta = metadata;
  meta["pairs"] = "13";
  EXPECT_THAT(refused(meta, tensors), testing::HasSubstr("has the wrong shape"));
  // A huge S is refused by the shape check before a task that size is
  // allocated (an 88 GB embedding at S = 99999), and past the bound at once.
  meta["pairs"] = "99999";
  EXPECT_THAT(refused(meta, tensors), testing::HasSubstr("has the wrong shape"));
  meta["pairs"] = "100000000";
  EXPECT_THAT(refused(meta, tensors), testing::HasSubstr("not a number in [2, 100000]"));
  meta = metadata;
  meta["update"] = "hebbian";
  EXPECT_THAT(refused(meta, tensors), testing::HasSubstr("unknown update rule 'hebbian'"));
  meta = metadata;
  meta.erase("d_key");
  EXPECT_THAT(refused(meta, tensors), testing::HasSubstr("no metadata 'd_key'"));
  meta = metadata;
  meta["setting"] = "three";
  EXPECT_THAT(refused(meta, tensors), testing::HasSubstr("'setting' is 'three'"));
  auto fewer = tensors;
  fewer.pop_back();
  EXPECT_THAT(refused(metadata, fewer), testing::HasSubstr("holds 8 tensors"));
}

TEST(Retrieval, RefusesAnUnknownSetting) {
  auto backend = MakeCpuBackend();
  RetrievalConfig config;
  config.setting = 3;
  EXPECT_FALSE(RetrievalTask::Create(*backend, config).ok());
}

TEST(Retrieval, RefusesSizesAndRatesOutOfRange) {
  auto backend = MakeCpuBackend();
  auto error = [&](auto spoil) {
    RetrievalConfig config;
    spoil(config);
    auto task = RetrievalTask::Create(*backend, config);
    EXPECT_FALSE(task.ok());
    return task.ok() ? std::string() : std::string(task.status().message());
  };
  EXPECT_THAT(error([](RetrievalConfig& c) { c.pairs = kMaxRetrievalPairs + 1; }),
              testing::HasSubstr("pairs in [2, 100000]"));
  EXPECT_THAT(error([](RetrievalConfig& c) { c.phi.nu = 0; }), testing::HasSubstr("ν"));
  EXPECT_THAT(error([](RetrievalConfig& c) { c.phi.nu = 100000; }), testing::HasSubstr("ν"));
  EXPECT_THAT(error([](RetrievalConfig& c) { c.lr = std::nanf(""); }), testing::HasSubstr("lr"));
  EXPECT_THAT(error([](RetrievalConfig& c) { c.lr = -1; }), testing::HasSubstr("lr"));
  // Signed features under the normalisers: a denominator ≤ 0 (either rule).
  for (UpdateRule rule : {UpdateRule::kSum, UpdateRule::kDelta}) {
    EXPECT_THAT(error([rule](RetrievalConfig& c) {
                  c.update = rule;
                  c.phi.kind = FeatureMapKind::kIdentity;
                }),
                testing::HasSubstr("not identity"));
  }
}

}  // namespace
}  // namespace fwp
