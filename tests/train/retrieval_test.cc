#include "train/retrieval.h"

#include <gtest/gtest.h>

namespace fwp {
namespace {

// The paper's setting 1 at S = 20: a delta-rule DPFP-1 memory learns the
// pairs (> 90% of queries right) within a small step budget on the CPU.
TEST(Retrieval, DeltaRuleLearnsTwentyPairsOnTheCpu) {
  auto backend = MakeCpuBackend();
  RetrievalConfig config;
  config.setting = 1;
  config.pairs = 20;
  config.update = UpdateRule::kDelta;
  config.phi.kind = FeatureMapKind::kDpfp;
  config.phi.nu = 1;
  config.max_steps = 3000;
  config.eval_every = 100;
  config.eval_sequences = 5;
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

TEST(Retrieval, RefusesAnUnknownSetting) {
  auto backend = MakeCpuBackend();
  RetrievalConfig config;
  config.setting = 3;
  EXPECT_FALSE(RetrievalTask::Create(*backend, config).ok());
}

}  // namespace
}  // namespace fwp
