#include "train/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kernels/random.h"
#include "model/model_dir.h"
#include "model/safetensors.h"

namespace fwp {
namespace {

Config TinyConfig() {
  Config c;
  c.vocab_size = 40;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.d_head = 8;
  c.d_ff = 32;
  return c;
}

// A token stream with structure to learn: a repeating pattern plus noise.
TokenFile Stream(int64_t n, uint64_t seed) {
  Rng rng(seed);
  TokenFile f;
  f.vocab_size = 40;
  for (int64_t i = 0; i < n; ++i) {
    f.tokens.push_back(rng.Uniform() < 0.8 ? static_cast<int32_t>(i % 7) : static_cast<int32_t>(rng.Next() % 40));
  }
  return f;
}

TrainerConfig Settings(int64_t steps, bool carry = false) {
  TrainerConfig t;
  t.carry_state = carry;
  t.batch = 4;
  t.seq = 16;
  t.steps = steps;
  t.eval_every = 0;
  t.eval_windows = 4;
  t.checkpoint_every = 0;
  t.seed = 5;
  t.optimizer.lr = 5e-3f;
  t.optimizer.warmup_steps = 3;
  t.optimizer.total_steps = 12;
  return t;
}

std::vector<double> RunFor(Trainer& trainer) {
  std::vector<double> losses;
  EXPECT_TRUE(trainer.Run([&](const StepReport& r) { losses.push_back(r.loss); }).ok());
  return losses;
}

class TrainerResume : public ::testing::TestWithParam<bool> {};

TEST_P(TrainerResume, ContinuesExactly) {
  const bool carry = GetParam();
  auto backend = MakeCpuBackend();
  backend->SetBatchInvariant(false);  // as fwp-train runs: BLAS matmuls
  const Config config = TinyConfig();
  const HostWeights init = RandomWeights(config, 9);
  const std::string whole = ::testing::TempDir() + "fwp_trainer_whole" + (carry ? "_carry" : "");
  const std::string halves = ::testing::TempDir() + "fwp_trainer_halves" + (carry ? "_carry" : "");
  std::filesystem::remove_all(whole);
  std::filesystem::remove_all(halves);

  auto a = Trainer::Create(*backend, config, init, Settings(12, carry), Stream(3000, 1), Stream(500, 2),
                           whole, "");
  ASSERT_TRUE(a.ok()) << a.status();
  const auto uninterrupted = RunFor(**a);
  ASSERT_EQ(uninterrupted.size(), 12u);
  EXPECT_LT(uninterrupted.back(), uninterrupted.front());

  auto b = Trainer::Create(*backend, config, init, Settings(6, carry), Stream(3000, 1), Stream(500, 2),
                           halves, "");
  ASSERT_TRUE(b.ok());
  auto first_half = RunFor(**b);  // checkpoints at its last step
  b->reset();
  auto c = Trainer::Resume(*backend, halves, Stream(3000, 1), Stream(500, 2), 12);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->step(), 6);
  const auto second_half = RunFor(**c);
  first_half.insert(first_half.end(), second_half.begin(), second_half.end());
  EXPECT_EQ(first_half, uninterrupted);  // bit for bit

  // And the final weights are the same bits.
  auto wa = SafetensorsFile::Open(whole + "/model.safetensors");
  auto wc = SafetensorsFile::Open(halves + "/model.safetensors");
  ASSERT_TRUE(wa.ok() && wc.ok());
  EXPECT_EQ(*ReadWeights(**wa, config), *ReadWeights(**wc, config));
}

// Random windows, and contiguous streams with the state carried (truncated
// BPTT, whose carried states are part of the checkpoint).
INSTANTIATE_TEST_SUITE_P(Batches, TrainerResume, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "CarriedState" : "RandomWindows"; });

TEST(Trainer, RefusesDataThatDoesNotFitTheModel) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig();
  TokenFile wide = Stream(3000, 1);
  wide.vocab_size = 41;
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 1), Settings(2), wide,
                           Stream(500, 2), ::testing::TempDir() + "x", "");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("vocabulary of 41"), std::string::npos);
  auto missing = Trainer::Resume(*backend, ::testing::TempDir() + "no_such_run", Stream(3000, 1),
                                 Stream(500, 2), 0);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("trainer.json"), std::string::npos);
}

// A corrupt header count must be refused, not trusted: 4·n overflows for
// n near 2^62 and would otherwise pass the size check and allocate n tokens.
TEST(TokenFile, RefusesAHeaderCountThatDoesNotMatchTheFile) {
  const std::string path = ::testing::TempDir() + "fwp_huge_count.tok";
  TokenFile f = Stream(20, 1);
  ASSERT_TRUE(WriteTokenFile(path, f).ok());
  ASSERT_TRUE(ReadTokenFile(path).ok());
  for (uint64_t n : {(uint64_t{1} << 62) + 20, uint64_t{21}, ~uint64_t{0}}) {
    std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(8);
    io.write(reinterpret_cast<const char*>(&n), 8);
    io.close();
    auto read = ReadTokenFile(path);
    ASSERT_FALSE(read.ok()) << n;
    EXPECT_NE(read.status().message().find("header says"), std::string::npos) << read.status();
  }
}

}  // namespace
}  // namespace fwp
