// Token sampling from a row of logits: greedy (temperature 0) or temperature
// with top-k, top-p (nucleus) and min-p filtering, drawn from a seeded Rng.
// Filters apply in the order top-k → top-p → min-p on the tempered
// distribution; ties in greedy pick the lowest token id.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
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

// INVALID_ARGUMENT naming the bad field as `prefix` + its name (the server
// passes "sampling." for its request fields, fwp-run "--" for its flags),
// or OK: temperature finite ≥ 0, top_k ≥ 0, top_p in (0, 1], min_p in [0, 1).
absl::Status ValidateSamplingParams(const SamplingParams& params, absl::string_view prefix);

// One row of a batched draw: its parameters and its uniform draw in [0, 1)
// (taken from the request's Rng by the caller, so a row's token depends on
// nothing else in the batch; unused for greedy rows).
struct RowSampling {
  SamplingParams params;
  double uniform = 0.0;
};

// One logit that a request's penalties change (math::PenalisedLogit): row
// `row` of a batch, token `token`. A batch lists each (row, token) once.
struct LogitPenalty {
  int32_t row = 0;
  int32_t token = 0;
  float repetition = 1.0f;  // the repetition penalty where the token was seen, else 1
  int32_t count = 0;        // times in the output: presence and frequency apply when > 0
  float presence = 0.0f;
  float frequency = 0.0f;
};

// The same penalties kept as a table in backend memory, int32 [rows, vocab]: a
// row per request being decoded, where entry c = 0 means its penalties list
// no token there and c ≥ 1 that they list it with count c − 1 (LogitPenalty's
// count). A request updates its row by the few entries that change each step
// (PenaltyCount) instead of sending its whole list again.
struct PenaltyCount {
  int32_t table_row = 0;
  int32_t token = 0;
  int32_t value = 0;  // the entry's new value: 0, or 1 + the count
};
// Row `row` of a batch's logits takes the penalties of row `table_row` of
// the table, with its request's parameters: each listed token's logit
// becomes math::PenalisedLogit(x, repetition, c − 1, presence, frequency),
// exactly as its LogitPenalty would make it.
struct PenaltyRow {
  int32_t row = 0;
  int32_t table_row = 0;
  float repetition = 1.0f;
  float presence = 0.0f;
  float frequency = 0.0f;
};

}  // namespace fwp

namespace fwp::cpu {

// Sets each entry of table [rows, vocab] (each place at most once a call).
void SetPenaltyCounts(int32_t* table, int64_t vocab, const PenaltyCount* entries, int64_t n);
// Applies each row's table row to its row of logits [·, vocab], in place
// (each batch row listed at most once).
void ApplyPenaltyRows(float* logits, int64_t vocab, const int32_t* table, const PenaltyRow* rows,
                      int64_t n);

// Applies each penalty to its logit of rows × vocab logits, in place.
void ApplyPenalties(float* logits, int64_t vocab, const LogitPenalty* penalties, int64_t n);

// logits: [vocab].
int32_t Argmax(const float* logits, int64_t vocab);
// The sampled token for the draw `uniform` (the definition every backend
// follows, to the token):
//   candidates  the ids whose logit is not NaN, in sampling order: higher
//               logit first, lower id first among equals;
//   weights     integers W_i = ⌊exp((l_i − l_max)/T) · 2^b⌋ (math::ExpWeight,
//               b = math::WeightBits(vocab)), so every sum below is exact
//               in any order and on any backend;
//   top-k       keeps the first top_k candidates;
//   top-p       then the shortest prefix of those weighing at least
//               ⌈q·ΣW / 2^24⌉, q = ⌊top_p · 2^24⌋ (math::TopPTarget);
//   min-p       then those with W_i ≥ ⌈min_p · 2^b⌉ (the top weighs 2^b);
//   the draw    r = ⌊⌊u·2^53⌋ · ΣW_kept / 2^53⌋, and the token is the kept id,
//               in id order, where the running sum of W first exceeds r.
// No step needs the candidates sorted: the cut-offs are found by radix
// selection on the order, and the draw walks ids in their own order.
int32_t SampleWithDraw(const float* logits, int64_t vocab, const SamplingParams& params,
                       double uniform);
// Greedy, or SampleWithDraw with rng.Uniform().
int32_t SampleToken(const float* logits, int64_t vocab,
                    const SamplingParams& params, Rng& rng);
// rows × vocab logits → one token per row.
void SampleRows(const float* logits, int64_t rows, int64_t vocab, const RowSampling* sampling,
                int32_t* tokens);

}  // namespace fwp::cpu
