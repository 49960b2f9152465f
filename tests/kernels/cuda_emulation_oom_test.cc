// The CUDA backend when the device is full, on the emulation only
// (tools/cuda_emulation), whose device memory can be made to run out at a
// chosen moment: the decode step's draw, its penalties included, must still
// give every session its token (drawn on the host), never a crash.
#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda_common.cuh"  // the emulation's: emu::g_device_bytes
#include "model/model.h"
#include "tests/reference.h"
#include "tests/sized_config.h"

namespace fwp {
namespace {

// Holds the emulated device at the memory in use now (plus `slack`) until
// it goes out of scope.
class FullDevice {
 public:
  explicit FullDevice(size_t slack) : bytes_(emu::g_device_bytes) {
    emu::g_device_bytes = emu::g_device_used + slack;
  }
  ~FullDevice() { emu::g_device_bytes = bytes_; }

 private:
  size_t bytes_;
};

TEST(EmulatedDevice, StepAndSampleDrawsOnTheHostWhenTheDeviceIsFull) {
  auto gpu = MakeCudaBackend(0);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const Config c = testing::SizedConfig(8192, 32, 1, 2, 16, 64);
  auto model = Model::Create(**gpu, c, RandomWeights(c, 5, 0.5f));
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t V = c.vocab_size, n = 16;
  auto reference = (*model)->NewStatePool(n);  // Step: the logits
  auto sampled = (*model)->NewStatePool(n);    // StepAndSample: the draws
  ASSERT_TRUE(reference.ok() && sampled.ok());
  std::vector<int32_t> slots(n), tokens(n);
  for (int32_t i = 0; i < n; ++i) {
    slots[i] = i;
    tokens[i] = 100 + 37 * i;
  }
  Rng rng(8);
  auto batch = testing::RandomSamplingBatch(n, V, rng);
  std::vector<RowSampling> all_greedy(n);  // draws that need almost no scratch
  // Every token of every row penalised: a list (3.1 MB) larger than the
  // sampler's scratch (1.6 MB); a third of them (1 MB), smaller.
  std::vector<LogitPenalty> large, small;
  for (int32_t r = 0; r < n; ++r) {
    for (int32_t t = 0; t < V; ++t) {
      large.push_back({r, t, 1.3f, t % 3, 0.2f, 0.1f});
      if (t % 3 == 0) small.push_back({r, t, 1.6f, 1 + t % 2, 0.3f, 0.1f});
    }
  }

  // One step of each pool, the draws checked against the logits' on the host.
  std::vector<float> logits(n * V);
  std::vector<int32_t> next(n);
  auto step = [&](const std::vector<RowSampling>& sampling,
                  const std::vector<LogitPenalty>& penalties, size_t full) {
    ASSERT_TRUE((*model)->Step(**reference, slots, tokens, logits.data()).ok());
    {
      std::optional<FullDevice> held;
      if (full > 0) held.emplace(full);
      ASSERT_TRUE((*model)->StepAndSample(**sampled, slots, tokens, sampling, next.data(), {},
                                          nullptr, penalties).ok());
    }
    cpu::ApplyPenalties(logits.data(), V, penalties.data(),
                        static_cast<int64_t>(penalties.size()));
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(next[i], cpu::SampleWithDraw(&logits[i * V], V, sampling[i].params,
                                             sampling[i].uniform))
          << "row " << i;
    }
    tokens = next;
  };
  // With room: the scratch grows to the sampler's size.
  step(batch.sampling, small, 0);
  // Full: the large list cannot get its scratch; penalties and draws on the host.
  step(batch.sampling, large, 4096);
  // With room, greedy and the smaller list: a scratch of its size; then
  // full, the penalties fit it but the sampled draws do not: drawn on the
  // host from the logits penalised on the device.
  step(all_greedy, small, 0);
  step(batch.sampling, small, 4096);
  // And with room again, on the device as before.
  step(batch.sampling, large, 0);
}

// The same with the penalties in a table on the device: when the step cannot
// get scratch for the table's rows, they are copied to the host and applied
// there, to the same draws.
TEST(EmulatedDevice, PenaltyTableRowsAreAppliedOnTheHostWhenTheDeviceIsFull) {
  auto gpu = MakeCudaBackend(0);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const Config c = testing::SizedConfig(4096, 32, 1, 2, 16, 64);
  auto model = Model::Create(**gpu, c, RandomWeights(c, 6, 0.5f));
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t V = c.vocab_size, n = 12, table_rows = 17;
  auto reference = (*model)->NewStatePool(n);
  auto sampled = (*model)->NewStatePool(n);
  ASSERT_TRUE(reference.ok() && sampled.ok());
  auto table = Buffer::Allocate(**gpu, table_rows * V * sizeof(int32_t));
  ASSERT_TRUE(table.ok());
  std::vector<int32_t> slots(n), tokens(n);
  for (int32_t i = 0; i < n; ++i) {
    slots[i] = i;
    tokens[i] = 50 + 31 * i;
  }
  Rng rng(9);
  const auto batch = testing::RandomSamplingBatch(n, V, rng);
  std::vector<float> logits(n * V);
  std::vector<int32_t> next(n);
  for (size_t full : {size_t{1}, size_t{0}}) {  // the first step without room: a fresh scratch
    const auto t = testing::RandomPenaltyTable(n, table_rows, V, rng);
    (*gpu)->CopyToDevice(table->data(), t.table.data(), t.table.size() * sizeof(int32_t));
    ASSERT_TRUE((*model)->Step(**reference, slots, tokens, logits.data()).ok());
    {
      std::optional<FullDevice> held;
      if (full > 0) held.emplace(0);
      ASSERT_TRUE((*model)->StepAndSample(**sampled, slots, tokens, batch.sampling, next.data(),
                                          {}, nullptr, {},
                                          {static_cast<const int32_t*>(table->data()),
                                           table_rows, t.rows}).ok());
    }
    cpu::ApplyPenalties(logits.data(), V, t.list.data(), static_cast<int64_t>(t.list.size()));
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(next[i], cpu::SampleWithDraw(&logits[i * V], V, batch.sampling[i].params,
                                             batch.sampling[i].uniform))
          << "row " << i << (full ? ", device full" : "");
    }
    tokens = next;
  }
}

}  // namespace
}  // namespace fwp
