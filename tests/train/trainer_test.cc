#include "train/trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "kernels/random.h"
#include "model/model_dir.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/sized_config.h"

namespace fwp {
namespace {

Config TinyConfig() { return testing::SizedConfig(40, 16, 2, 2, 8, 32); }

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

TrainerConfig Settings(int64_t steps, bool carry = false, int64_t accum = 1) {
  TrainerConfig t;
  t.carry_state = carry;
  t.eval_stream = carry;  // as fwp-train's --eval_context auto
  t.accum = accum;
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

// A run directory under the test's temporary directory, empty.
std::string FreshDir(const std::string& name) {
  const std::string path = ::testing::TempDir() + name;
  std::filesystem::remove_all(path);
  return path;
}

std::vector<double> RunFor(Trainer& trainer) {
  std::vector<double> losses;
  EXPECT_TRUE(trainer.Run([&](const StepReport& r) { losses.push_back(r.loss); }).ok());
  return losses;
}

class TrainerResume : public ::testing::TestWithParam<std::tuple<bool, int64_t>> {};

TEST_P(TrainerResume, ContinuesExactly) {
  const auto [carry, accum] = GetParam();
  auto backend = MakeCpuBackend();
  backend->SetBatchInvariant(false);  // as fwp-train runs: BLAS matmuls
  const Config config = TinyConfig();
  const HostWeights init = RandomWeights(config, 9);
  const std::string tag = std::string(carry ? "_carry" : "") + "_accum" + std::to_string(accum);
  const std::string whole = ::testing::TempDir() + "fwp_trainer_whole" + tag;
  const std::string halves = ::testing::TempDir() + "fwp_trainer_halves" + tag;
  std::filesystem::remove_all(whole);
  std::filesystem::remove_all(halves);

  auto a = Trainer::Create(*backend, config, init, Settings(12, carry, accum), Stream(3000, 1), Stream(500, 2),
                           whole, "");
  ASSERT_TRUE(a.ok()) << a.status();
  const auto uninterrupted = RunFor(**a);
  ASSERT_EQ(uninterrupted.size(), 12u);
  EXPECT_LT(uninterrupted.back(), uninterrupted.front());

  auto b = Trainer::Create(*backend, config, init, Settings(6, carry, accum), Stream(3000, 1), Stream(500, 2),
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
// BPTT, whose carried states are part of the checkpoint); one pass per step,
// and gradients accumulated over two.
INSTANTIATE_TEST_SUITE_P(Batches, TrainerResume,
                         ::testing::Combine(::testing::Values(false, true),
                                            ::testing::Values(int64_t{1}, int64_t{2})),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "CarriedState"
                                                                      : "RandomWindows") +
                                  "Accum" + std::to_string(std::get<1>(info.param));
                         });

// Two passes of 4 sequences per step are one batch of 8: the same windows
// (or streams), the same losses and nearly the same weights (sums in
// another order). One pass of 4 is another run.
class TrainerAccumulation : public ::testing::TestWithParam<bool> {};

TEST_P(TrainerAccumulation, TwoPassesOfFourAreOneBatchOfEight) {
  const bool carry = GetParam();
  auto backend = MakeCpuBackend();
  backend->SetBatchInvariant(false);
  const Config config = TinyConfig();
  const HostWeights init = RandomWeights(config, 9);
  // Losses and gradient norms (Adam alone would not see a gradient off by a
  // constant factor).
  auto run = [&](int64_t batch, int64_t accum, std::vector<double>* losses) {
    TrainerConfig settings = Settings(8, carry, accum);
    settings.batch = batch;
    const std::string out = FreshDir("fwp_trainer_accum" + std::string(carry ? "_carry" : "") +
                                     std::to_string(batch) + "x" + std::to_string(accum));
    auto t = Trainer::Create(*backend, config, init, settings, Stream(3000, 1), Stream(500, 2),
                             out, "");
    EXPECT_TRUE(t.ok()) << t.status();
    EXPECT_TRUE((*t)->Run([&](const StepReport& r) {
                   losses->push_back(r.loss);
                   losses->push_back(r.grad_norm);
                 }).ok());
    auto file = SafetensorsFile::Open(out + "/model.safetensors");
    EXPECT_TRUE(file.ok());
    return *ReadWeights(**file, config);
  };
  std::vector<double> big, accumulated, small;
  const HostWeights w_big = run(8, 1, &big);
  const HostWeights w_accumulated = run(4, 2, &accumulated);
  const HostWeights w_small = run(4, 1, &small);
  ASSERT_EQ(big.size(), 16u);
  ASSERT_EQ(accumulated.size(), 16u);
  for (size_t i = 0; i < big.size(); ++i) {
    EXPECT_NEAR(accumulated[i], big[i], 1e-5 * big[i])
        << (i % 2 ? "gradient norm" : "loss") << " at step " << i / 2 + 1;
  }
  auto relative_difference = [](const HostWeights& a, const HostWeights& b) {
    double diff = 0, norm = 0;
    for (const auto& [name, tensor] : a) {
      const std::vector<float>& other = b.at(name);
      EXPECT_EQ(tensor.size(), other.size()) << name;
      for (size_t i = 0; i < tensor.size() && i < other.size(); ++i) {
        diff += (tensor[i] - other[i]) * double(tensor[i] - other[i]);
        norm += tensor[i] * double(tensor[i]);
      }
    }
    return std::sqrt(diff / norm);
  };
  const double accumulated_error = relative_difference(w_big, w_accumulated);
  const double small_error = relative_difference(w_big, w_small);
  EXPECT_LT(accumulated_error, 1e-6);
  EXPECT_GT(small_error, 100 * accumulated_error) << "one pass of 4 should be another run";
  std::printf("weights after 8 steps, relative to batch 8: 4×2 %.2e, 4×1 %.2e\n",
              accumulated_error, small_error);
}

INSTANTIATE_TEST_SUITE_P(Batches, TrainerAccumulation, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "CarriedState" : "RandomWindows"; });

// A valid split unlike the training data (uniform tokens, no pattern): the
// more the model learns the pattern, the worse it scores there, so the best
// evaluation comes early and the last weights are not the best.
TEST(Trainer, KeepBestWritesTheWeightsOfTheLowestValidLossAndResumeKeepsTheRecord) {
  auto backend = MakeCpuBackend();
  backend->SetBatchInvariant(false);
  const Config config = TinyConfig();
  TokenFile unlike;
  unlike.vocab_size = 40;
  Rng rng(77);
  for (int i = 0; i < 500; ++i) unlike.tokens.push_back(static_cast<int32_t>(rng.Next() % 40));
  TrainerConfig settings = Settings(12);
  settings.eval_every = 2;
  settings.checkpoint_every = 6;
  settings.keep_best = true;
  settings.optimizer.lr = 2e-2f;
  const std::string out = FreshDir("fwp_trainer_best");
  settings.steps = 6;
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 3), settings, Stream(3000, 1),
                           unlike, out, "");
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<std::pair<int64_t, double>> evaluations;
  auto record = [&](const StepReport& r) {
    if (r.valid_loss >= 0) evaluations.push_back({r.step, r.valid_loss});
  };
  ASSERT_TRUE((*t)->Run(record).ok());
  t->reset();
  auto resumed = Trainer::Resume(*backend, out, Stream(3000, 1), unlike, 12);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE((*resumed)->Run(record).ok());
  ASSERT_EQ(evaluations.size(), 6u);
  auto best = std::min_element(evaluations.begin(), evaluations.end(),
                               [](const auto& a, const auto& b) { return a.second < b.second; });
  ASSERT_LE(best->first, 6) << "the valid split should favour an early step";
  EXPECT_EQ((*resumed)->best_step(), best->first);
  EXPECT_EQ((*resumed)->best_valid_loss(), best->second);
  std::ifstream best_json(out + "/best/best.json");
  const nlohmann::json j = nlohmann::json::parse(best_json);
  EXPECT_EQ(j["step"].get<int64_t>(), best->first);
  EXPECT_EQ(j["valid_loss"].get<double>(), best->second);
  // best/ holds the weights that scored it: scored again, the same loss.
  auto host = ReadHostModel(out + "/best");
  ASSERT_TRUE(host.ok()) << host.status();
  const std::string again = FreshDir("fwp_trainer_best_again");
  auto scorer = Trainer::Create(*backend, config, host->weights, settings, Stream(3000, 1), unlike,
                                again, "");
  ASSERT_TRUE(scorer.ok()) << scorer.status();
  auto loss = (*scorer)->Evaluate();
  ASSERT_TRUE(loss.ok());
  EXPECT_EQ(loss->mean, best->second);
  // And they are not the last weights.
  auto last = ReadHostModel(out);
  ASSERT_TRUE(last.ok());
  EXPECT_NE(last->weights, host->weights);
}

// A run checkpointed before accum, eval_context and keep_best existed: its
// trainer.json lacks them, and it resumes as it ran (one pass, windows).
TEST(Trainer, ResumesARunFromBeforeTheNewerSettings) {
  auto backend = MakeCpuBackend();
  backend->SetBatchInvariant(false);
  const Config config = TinyConfig();
  const std::string out = FreshDir("fwp_trainer_old_run");
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 9), Settings(2, true),
                           Stream(3000, 1), Stream(500, 2), out, "");
  ASSERT_TRUE(t.ok());
  RunFor(**t);
  std::ifstream in(out + "/trainer.json");
  nlohmann::json j = nlohmann::json::parse(in);
  in.close();
  for (const char* field : {"accum", "eval_context", "keep_best"}) {
    ASSERT_TRUE(j.contains(field)) << field;
    j.erase(field);
  }
  std::ofstream(out + "/trainer.json") << j.dump(2);
  auto resumed = Trainer::Resume(*backend, out, Stream(3000, 1), Stream(500, 2), 4);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->config().accum, 1);
  EXPECT_FALSE((*resumed)->config().eval_stream);
  EXPECT_FALSE((*resumed)->config().keep_best);
  EXPECT_EQ(RunFor(**resumed).size(), 2u);
}

// fwp-train's SIGINT/SIGTERM: asked to stop after step 5 (off the
// checkpoint schedule), the run checkpoints there, and --resume continues as
// if it had never stopped.
TEST(Trainer, AStoppedRunIsCheckpointedWhereItStoodAndResumesExactly) {
  auto backend = MakeCpuBackend();
  backend->SetBatchInvariant(false);
  const Config config = TinyConfig();
  const HostWeights init = RandomWeights(config, 9);
  const std::string whole = FreshDir("fwp_trainer_unstopped");
  const std::string stopped = FreshDir("fwp_trainer_stopped");
  TrainerConfig settings = Settings(12, true);
  settings.checkpoint_every = 4;
  auto a = Trainer::Create(*backend, config, init, settings, Stream(3000, 1), Stream(500, 2), whole, "");
  ASSERT_TRUE(a.ok());
  const auto uninterrupted = RunFor(**a);
  auto b = Trainer::Create(*backend, config, init, settings, Stream(3000, 1), Stream(500, 2), stopped, "");
  ASSERT_TRUE(b.ok());
  std::vector<double> losses;
  const absl::Status s = (*b)->Run([&](const StepReport& r) { losses.push_back(r.loss); },
                                   [&] { return losses.size() == 5; });
  ASSERT_TRUE(absl::IsCancelled(s)) << s;
  EXPECT_NE(s.message().find("stopped at step 5 of 12"), std::string::npos) << s;
  EXPECT_EQ(*CheckpointStep(stopped), 5);
  b->reset();
  auto c = Trainer::Resume(*backend, stopped, Stream(3000, 1), Stream(500, 2), 0);
  ASSERT_TRUE(c.ok()) << c.status();
  const auto rest = RunFor(**c);
  losses.insert(losses.end(), rest.begin(), rest.end());
  EXPECT_EQ(losses, uninterrupted);
}

// A checkpoint is written into <out>/.checkpoint and then moved in; a crash
// at any point leaves a run that resumes exactly, from the new checkpoint
// when it was whole (the moves are finished) or from the one before.
TEST(Trainer, ACrashWhileACheckpointIsWrittenOrMovedInLosesNothing) {
  namespace fs = std::filesystem;
  auto backend = MakeCpuBackend();
  backend->SetBatchInvariant(false);
  const Config config = TinyConfig();
  const HostWeights init = RandomWeights(config, 3);
  TrainerConfig settings = Settings(8, true);
  settings.checkpoint_every = 2;
  const std::string out = FreshDir("fwp_trainer_crash");
  const std::string at4 = FreshDir("fwp_trainer_crash_at4");
  const std::string at6 = FreshDir("fwp_trainer_crash_at6");
  auto t = Trainer::Create(*backend, config, init, settings, Stream(3000, 1), Stream(500, 2), out, "");
  ASSERT_TRUE(t.ok());
  std::vector<double> uninterrupted;
  ASSERT_TRUE((*t)->Run([&](const StepReport& r) {
    uninterrupted.push_back(r.loss);
    if (r.step == 4) fs::copy(out, at4, fs::copy_options::recursive);
    if (r.step == 6) fs::copy(out, at6, fs::copy_options::recursive);
  }).ok());
  t->reset();
  ASSERT_EQ(uninterrupted.size(), 8u);
  ASSERT_FALSE(fs::exists(at4 + "/.checkpoint"));  // moved in and gone after each save
  // `moved` of step 6's files already in <out>, the rest (with trainer.json
  // when `whole`) still in the staging folder; the base is step 4's run.
  auto crashed = [&](const std::string& name, bool whole, std::vector<std::string> moved) {
    const std::string dir = FreshDir(name);
    fs::copy(at4, dir, fs::copy_options::recursive);
    fs::create_directories(dir + "/.checkpoint");
    for (const auto& entry : fs::directory_iterator(at6)) {
      const std::string file = entry.path().filename().string();
      if (file == "trainer.json" && !whole) continue;
      const bool in = std::find(moved.begin(), moved.end(), file) != moved.end();
      fs::copy_file(entry.path(), (in ? dir : dir + "/.checkpoint") + "/" + file,
                    fs::copy_options::overwrite_existing);
    }
    if (!whole) fs::resize_file(dir + "/.checkpoint/carry.safetensors", 100);  // mid-write
    return dir;
  };
  struct Case {
    const char* name;
    bool whole;
    std::vector<std::string> moved;
    int64_t resumes_at;
  };
  for (const Case& c : {Case{"fwp_trainer_crash_writing", false, {}, 4},
                        Case{"fwp_trainer_crash_written", true, {}, 6},
                        Case{"fwp_trainer_crash_moving", true,
                             {"model.safetensors", "optimizer.safetensors"}, 6}}) {
    const std::string dir = crashed(c.name, c.whole, c.moved);
    if (c.whole) {  // the step-4 trainer.json with step-6 weights: mixed until finished
      EXPECT_EQ(*CheckpointStep(dir), 4) << c.name;
    }
    auto r = Trainer::Resume(*backend, dir, Stream(3000, 1), Stream(500, 2), 0);
    ASSERT_TRUE(r.ok()) << c.name << ": " << r.status();
    EXPECT_EQ((*r)->step(), c.resumes_at) << c.name;
    EXPECT_FALSE(fs::exists(dir + "/.checkpoint")) << c.name;
    const auto rest = RunFor(**r);
    EXPECT_EQ(rest, std::vector<double>(uninterrupted.begin() + c.resumes_at, uninterrupted.end()))
        << c.name;
  }
}

// Files of one checkpoint copied over by hand from another step mix steps,
// which Resume refuses (each file names its step) instead of continuing
// from a mixture.
TEST(Trainer, ACheckpointCutOffWhileWrittenIsRefused) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig();
  const std::string out = FreshDir("fwp_trainer_torn");
  const std::string early = FreshDir("fwp_trainer_torn_step2");
  TrainerConfig settings = Settings(4, true);
  settings.checkpoint_every = 2;
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 1), settings, Stream(3000, 1),
                           Stream(500, 2), out, "");
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*t)->Run([&](const StepReport& r) {
    if (r.step == 2) std::filesystem::copy(out, early);
  }).ok());
  t->reset();
  for (const char* file : {"model.safetensors", "carry.safetensors", "optimizer.safetensors",
                           "trainer.json"}) {
    const std::string torn = FreshDir(std::string("fwp_trainer_torn_") + file);
    std::filesystem::copy(out, torn);
    std::filesystem::copy_file(early + "/" + file, torn + "/" + file,
                               std::filesystem::copy_options::overwrite_existing);
    auto r = Trainer::Resume(*backend, torn, Stream(3000, 1), Stream(500, 2), 6);
    ASSERT_FALSE(r.ok()) << file;
    EXPECT_NE(r.status().message().find("cut off while it was written"), std::string::npos)
        << file << ": " << r.status();
  }
  EXPECT_TRUE(Trainer::Resume(*backend, out, Stream(3000, 1), Stream(500, 2), 6).ok());
}

// Token files prepared again (other text, or the same count of other ids)
// would give the same step other batches: --resume refuses them.
TEST(Trainer, ResumeRefusesTokenFilesThatChanged) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig();
  const std::string out = FreshDir("fwp_trainer_changed_data");
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 1), Settings(2), Stream(3000, 1),
                           Stream(500, 2), out, "");
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*t)->Run([](const StepReport&) {}).ok());
  t->reset();
  auto same = Trainer::Resume(*backend, out, Stream(3000, 1), Stream(500, 2), 4);
  EXPECT_TRUE(same.ok()) << same.status();
  same->reset();
  auto ids = Trainer::Resume(*backend, out, Stream(3000, 7), Stream(500, 2), 4);
  ASSERT_FALSE(ids.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(ids.status())) << ids.status();
  EXPECT_NE(ids.status().message().find("the train tokens are not those"), std::string::npos)
      << ids.status();
  EXPECT_NE(ids.status().message().find("3000 tokens then and now"), std::string::npos)
      << ids.status();
  auto longer = Trainer::Resume(*backend, out, Stream(3000, 1), Stream(600, 2), 4);
  ASSERT_FALSE(longer.ok());
  EXPECT_NE(longer.status().message().find("valid tokens are not those"), std::string::npos)
      << longer.status();
  EXPECT_NE(longer.status().message().find("500 tokens then, 600 now"), std::string::npos)
      << longer.status();
}

// A --data path trainer.json cannot hold (not UTF-8) is refused at the
// start, not at the first checkpoint.
TEST(Trainer, RefusesADataPathThatCannotBeRecorded) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig();
  TrainerConfig settings = Settings(2);
  settings.data = "/data/\xff\xfe";
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 1), settings, Stream(3000, 1),
                           Stream(500, 2), FreshDir("fwp_trainer_bad_path"), "");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("UTF-8"), std::string::npos) << t.status();
}

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

TEST(Trainer, RefusesBadSettingsNamingTheFlag) {
  const std::pair<std::function<void(TrainerConfig&)>, std::string> cases[] = {
      {[](TrainerConfig& c) { c.optimizer.lr = std::nanf(""); }, "--lr"},
      {[](TrainerConfig& c) { c.optimizer.lr = 0; }, "--lr"},
      {[](TrainerConfig& c) { c.optimizer.min_lr_ratio = 1.5f; }, "--min_lr_ratio"},
      {[](TrainerConfig& c) { c.optimizer.min_lr_ratio = std::nanf(""); }, "--min_lr_ratio"},
      {[](TrainerConfig& c) { c.optimizer.warmup_steps = -1; }, "--warmup"},
      {[](TrainerConfig& c) { c.optimizer.clip_norm = INFINITY; }, "--clip"},
      {[](TrainerConfig& c) { c.optimizer.weight_decay = -0.1f; }, "--weight_decay"},
      {[](TrainerConfig& c) { c.steps = 0; }, "--steps"},
      {[](TrainerConfig& c) { c.batch = int64_t{1} << 62; }, "--batch"},
      {[](TrainerConfig& c) { c.batch = c.seq = 1 << 20; }, "--batch × --seq"},
      {[](TrainerConfig& c) { c.accum = 0; }, "--accum"},
      {[](TrainerConfig& c) { c.eval_windows = int64_t{1} << 62; }, "--eval_windows"},
      {[](TrainerConfig& c) { c.accum = int64_t{1} << 40; }, "--accum"},
  };
  for (const auto& [spoil, flag] : cases) {
    TrainerConfig c = Settings(2);
    spoil(c);
    const absl::Status s = CheckTrainerConfig(c);
    EXPECT_EQ(s.message().rfind(flag, 0), 0u) << flag << ": " << s;
  }
  EXPECT_TRUE(CheckTrainerConfig(Settings(2)).ok());
}

TEST(Trainer, StopsWhenTheLossIsNotFinite) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig();
  TrainerConfig settings = Settings(20);
  settings.optimizer.lr = 1e30f;
  settings.optimizer.warmup_steps = 0;
  settings.optimizer.clip_norm = 0;
  const std::string out = ::testing::TempDir() + "fwp_trainer_nan";
  std::filesystem::remove_all(out);
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 1), settings, Stream(3000, 1),
                           Stream(500, 2), out, "");
  ASSERT_TRUE(t.ok()) << t.status();
  int64_t reported = 0;
  const absl::Status s = (*t)->Run([&](const StepReport&) { ++reported; });
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("loss is not finite at step " + std::to_string(reported + 1)),
            std::string::npos) << s;
  EXPECT_LT(reported, 20);
}

TEST(Trainer, ResumeOfAFinishedRunSaysSo) {
  auto backend = MakeCpuBackend();
  const Config config = TinyConfig();
  const std::string out = ::testing::TempDir() + "fwp_trainer_finished";
  std::filesystem::remove_all(out);
  auto t = Trainer::Create(*backend, config, RandomWeights(config, 1), Settings(2),
                           Stream(3000, 1), Stream(500, 2), out, "");
  ASSERT_TRUE(t.ok());
  RunFor(**t);
  EXPECT_EQ(*CheckpointStep(out), 2);
  for (int64_t steps : {0, 1, 2}) {
    auto r = Trainer::Resume(*backend, out, Stream(3000, 1), Stream(500, 2), steps);
    ASSERT_FALSE(r.ok()) << steps;
    EXPECT_NE(r.status().message().find("nothing to do"), std::string::npos) << r.status();
  }
  auto more = Trainer::Resume(*backend, out, Stream(3000, 1), Stream(500, 2), 3);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ((*more)->config().optimizer.total_steps, 12);  // the schedule keeps its total
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
