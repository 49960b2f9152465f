// Token sampling from a row of logits: greedy (temperature 0) or temperature
// with top-k, top-p (nucleus) and min-p filtering, drawn from a seeded Rng.
// Filters apply in the order top-k → top-p → min-p on the tempered
// distribution; ties in greedy pick the lowest token id.
#pragma once

#include <cstdint>

#include "kernels/random.h"
#include "kernels/shared_math.h"

namespace fwp {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off

  // Greedy rows take the argmax and draw nothing from their Rng.
  bool greedy() const { return math::GreedySampling(temperature, top_k); }
};

// One row of a batched draw: its parameters and its uniform draw in [0, 1)
// (taken from the request's Rng by the caller, so a row's token depends on
// nothing else in the batch; unused for greedy rows).
struct RowSampling {
  SamplingParams params;
  double uniform = 0.0;
};

}  // namespace fwp

namespace fwp::cpu {

// logits: [vocab].
int32_t Argmax(const float* logits, int64_t vocab);
// The sampled token for the draw `uniform` (the definition every backend
// follows): candidates sorted by logit, highest first, lower id first among
// equals; the first top_k; probabilities p_i = exp((l_i − l_max) · (1/T)) in double;
// top-p keeps the shortest prefix whose mass Σ p_i/Σp reaches top_p (summed
// in order), min-p those with p_i ≥ min_p · p_max; the token is the first
// whose running sum of kept p exceeds uniform · Σ kept p.
int32_t SampleWithDraw(const float* logits, int64_t vocab, const SamplingParams& params,
                       double uniform);
// Greedy, or SampleWithDraw with rng.Uniform().
int32_t SampleToken(const float* logits, int64_t vocab,
                    const SamplingParams& params, Rng& rng);
// rows × vocab logits → one token per row.
void SampleRows(const float* logits, int64_t rows, int64_t vocab, const RowSampling* sampling,
                int32_t* tokens);

}  // namespace fwp::cpu
