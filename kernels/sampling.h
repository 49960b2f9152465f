// Token sampling from a row of logits: greedy (temperature 0) or temperature
// with top-k, top-p (nucleus) and min-p filtering, drawn from a seeded Rng.
// Filters apply in the order top-k → top-p → min-p on the tempered
// distribution; ties in greedy pick the lowest token id.
#pragma once

#include <cstdint>

#include "kernels/random.h"

namespace fwp {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
};

}  // namespace fwp

namespace fwp::cpu {

// logits: [vocab].
int32_t Argmax(const float* logits, int64_t vocab);
int32_t SampleToken(const float* logits, int64_t vocab,
                    const SamplingParams& params, Rng& rng);

}  // namespace fwp::cpu
