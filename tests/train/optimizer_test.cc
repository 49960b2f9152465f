#include "train/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/random.h"
#include "tests/sized_config.h"

namespace fwp {
namespace {

TEST(LearningRate, WarmsUpLinearlyThenDecaysOnACosine) {
  OptimizerConfig c;
  c.lr = 1.0f;
  c.min_lr_ratio = 0.1f;
  c.warmup_steps = 10;
  c.total_steps = 110;
  EXPECT_FLOAT_EQ(LearningRate(c, 1), 0.1f);
  EXPECT_FLOAT_EQ(LearningRate(c, 5), 0.5f);
  EXPECT_FLOAT_EQ(LearningRate(c, 10), 1.0f);
  EXPECT_NEAR(LearningRate(c, 60), 0.55f, 1e-6);  // half way: (1 + 0.1) / 2
  EXPECT_NEAR(LearningRate(c, 110), 0.1f, 1e-6);
  EXPECT_NEAR(LearningRate(c, 500), 0.1f, 1e-6);  // stays at the floor
}

// Memorises one batch of random tokens: the loss must fall from ln(vocab).
void OverfitOneBatch(Backend& backend) {
  const Config c = testing::SizedConfig(32, 32, 2, 2, 16, 64);
  auto model = Model::Create(backend, c, RandomWeights(c, 1));
  ASSERT_TRUE(model.ok()) << model.status();
  OptimizerConfig oc;
  oc.lr = 1e-2f;
  oc.warmup_steps = 10;
  oc.total_steps = 150;
  oc.weight_decay = 0.0f;
  auto opt = Optimizer::Create(**model, oc);
  ASSERT_TRUE(opt.ok());
  const int64_t batch = 4, time = 32;
  Rng rng(2);
  std::vector<int32_t> stream(batch * time + 1);
  for (auto& t : stream) t = static_cast<int32_t>(rng.Next() % c.vocab_size);
  std::vector<int32_t> tokens(stream.begin(), stream.end() - 1), targets(stream.begin() + 1, stream.end());
  double first = 0, last = 0;
  for (int64_t step = 0; step < oc.total_steps; ++step) {
    (*opt)->ZeroGrads();
    auto loss = (*model)->ForwardBackward(tokens, targets, batch, &(*opt)->grads());
    ASSERT_TRUE(loss.ok()) << loss.status();
    if (step == 0) first = loss->mean;
    last = loss->mean;
    (*opt)->Step();
  }
  EXPECT_NEAR(first, std::log(32.0), 0.3);
  EXPECT_LT(last, 0.3) << "from " << first;
}

// A gradient that overflowed (inf) must not reach the weights: clipping
// would scale it by clip/inf = 0, and inf · 0 = NaN in every weight.
TEST(Optimizer, AStepWithANonFiniteGradientChangesNothing) {
  auto backend = MakeCpuBackend();
  const Config c = testing::SizedConfig(32, 32, 2, 2, 16, 64);
  auto model = Model::Create(*backend, c, RandomWeights(c, 1));
  ASSERT_TRUE(model.ok()) << model.status();
  auto opt = Optimizer::Create(**model, OptimizerConfig{});
  ASSERT_TRUE(opt.ok());
  const int64_t batch = 2, time = 8;
  std::vector<int32_t> tokens(batch * time), targets(batch * time);
  for (int64_t i = 0; i < batch * time; ++i) {
    tokens[i] = static_cast<int32_t>(i % 32);
    targets[i] = static_cast<int32_t>((i * 7 + 3) % 32);
  }
  (*opt)->ZeroGrads();
  ASSERT_TRUE((*model)->ForwardBackward(tokens, targets, batch, &(*opt)->grads()).ok());
  const HostWeights before = (*model)->Weights();
  const float inf = std::numeric_limits<float>::infinity();
  backend->CopyToDevice((*opt)->grads()[1].data(), &inf, sizeof(float));
  EXPECT_FALSE(std::isfinite((*opt)->Step()));
  EXPECT_EQ((*opt)->step(), 0);
  EXPECT_EQ((*model)->Weights(), before);
  // The next, finite step is the first.
  const float zero = 0.0f;
  backend->CopyToDevice((*opt)->grads()[1].data(), &zero, sizeof(float));
  EXPECT_TRUE(std::isfinite((*opt)->Step()));
  EXPECT_EQ((*opt)->step(), 1);
  EXPECT_NE((*model)->Weights(), before);
}

TEST(Training, ATinyModelOverfitsOneBatchOnTheCpu) {
  auto backend = MakeCpuBackend();
  OverfitOneBatch(*backend);
}

TEST(Training, ATinyModelOverfitsOneBatchOnTheGpu) {
  auto gpu = MakeCudaBackend(0);
  if (!gpu.ok()) GTEST_SKIP() << "no CUDA backend: " << gpu.status().message();
  OverfitOneBatch(**gpu);
}

}  // namespace
}  // namespace fwp
