// The sampler's work for the bench programs: rows of random logits over a
// vocabulary, drawn greedily, with top-p 0.9 and with temperature alone.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "bench/timing.h"
#include "kernels/backend.h"
#include "kernels/random.h"

namespace fwp::bench {

struct SamplerBatch {
  std::vector<float> logits;  // host
  std::vector<RowSampling> greedy, top_p, temperature;
};

inline SamplerBatch MakeSamplerBatch(int64_t rows, int64_t vocab, Rng& rng) {
  SamplerBatch b;
  b.logits.resize(rows * vocab);
  for (float& x : b.logits) x = static_cast<float>(3.0 * rng.Normal());
  b.greedy.resize(rows);
  b.top_p.resize(rows);
  b.temperature.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    b.top_p[i].params.temperature = 1.0f;
    b.top_p[i].params.top_p = 0.9f;
    b.top_p[i].uniform = rng.Uniform();
    b.temperature[i].params.temperature = 0.8f;
    b.temperature[i].uniform = rng.Uniform();
  }
  return b;
}

// Seconds per SampleRows call over `logits` (backend memory).
inline double TimeSampleRows(Backend& backend, const float* logits, int64_t vocab,
                             const std::vector<RowSampling>& rows, double seconds) {
  std::vector<int32_t> tokens(rows.size());
  return TimePerCall(seconds, [&] {
    if (!backend.SampleRows(logits, rows.size(), vocab, rows.data(), tokens.data()).ok()) {
      std::abort();
    }
  });
}

}  // namespace fwp::bench
