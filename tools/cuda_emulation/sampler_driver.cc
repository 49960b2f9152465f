// tools/cuda_emulation driver: sampling.cu emulated on the CPU against
// cpu::SampleRows (the definition every backend follows). Every token must
// be the CPU's, on rows of every kind (greedy, temperature, top-k, top-p,
// min-p, all together) with ties and ±0 in the logits, shaped by KIND
// (testing::ShapeSamplingLogits: 0 as drawn, 1 few values, 2 all close,
// 3 NaN and ±∞).
//
//   fwp-cuda-sampler-emulation ROWS VOCAB SEED [KIND]
#include "kernels/cuda_common.cuh"
#include SAMPLING_INC

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tests/reference.h"

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s ROWS VOCAB SEED [KIND]\n", argv[0]);
    return 2;
  }
  const int64_t rows = std::atoll(argv[1]), vocab = std::atoll(argv[2]);
  fwp::Rng rng(std::strtoull(argv[3], nullptr, 10));
  auto batch = fwp::testing::RandomSamplingBatch(rows, vocab, rng);
  fwp::testing::ShapeSamplingLogits(batch.logits, argc == 5 ? std::atoi(argv[4]) : 0, rng);
  std::vector<int32_t> want(rows), got(rows, -1), work(rows, -1);
  fwp::cpu::SampleRows(batch.logits.data(), rows, vocab, batch.sampling.data(), want.data());
  int64_t sampled = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!batch.sampling[r].params.greedy()) work[r] = static_cast<int32_t>(sampled++);
  }
  std::vector<char> scratch(fwp::cuda::SampleScratchBytes(rows, sampled, vocab));
  fwp::cuda::SampleRows(nullptr, batch.logits.data(), rows, vocab, batch.sampling.data(),
                        work.data(), sampled, got.data(), scratch.data());
  int failures = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (got[r] != want[r]) {
      std::printf("FAIL row %lld: token %d, the CPU draws %d\n", static_cast<long long>(r),
                  got[r], want[r]);
      ++failures;
    }
  }
  std::printf("%lld rows (%lld sampled) of %lld: %d differ\n", static_cast<long long>(rows),
              static_cast<long long>(sampled), static_cast<long long>(vocab), failures);
  return failures ? 1 : 0;
}
