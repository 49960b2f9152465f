// Per-request generation logic, independent of batching and transport:
// sampling with penalties and log-probabilities (TokenSampler) and the text
// side of a stream with stop strings (TextStream).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/random.h"
#include "kernels/sampling.h"
#include "model/tokenizer.h"

namespace fwp::server {

struct GenerationParams {
  SamplingParams sampling;          // temperature, top-k, top-p, min-p
  float repetition_penalty = 1.0f;  // 1: off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  int32_t max_tokens = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool logprobs = false;
  int32_t top_logprobs = 0;
};

// Limits the server enforces on GenerationParams (flags set some of them).
struct GenerationLimits {
  int32_t max_tokens = 4096;
  int32_t max_stop_strings = 16;
  int32_t max_stop_bytes = 256;
  int32_t max_top_logprobs = 20;
  int32_t max_stop_token_ids = 64;
};

// INVALID_ARGUMENT naming the field, or OK. `vocab` bounds token ids.
absl::Status ValidateGenerationParams(const GenerationParams& params,
                                      const GenerationLimits& limits, int32_t vocab);

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

// Draws tokens for one request. Penalties follow the common definitions:
// repetition divides positive logits (multiplies negative ones) of every
// token in the prompt or the output; presence subtracts once per token in
// the output; frequency subtracts per occurrence in the output. Greedy ties
// pick the lowest id. Log-probabilities are from the unmodified logits.
class TokenSampler {
 public:
  TokenSampler(const GenerationParams& params, absl::Span<const int32_t> prompt,
               int64_t vocab);

  struct Pick {
    int32_t token = 0;
    float logprob = 0.0f;            // with params.logprobs
    std::vector<TokenLogprob> top;   // params.top_logprobs entries
  };
  // logits: [vocab] (not modified).
  Pick Sample(const float* logits);

  // Whether Sample needs the whole row of logits (log-probabilities). When
  // it does not, a batched draw on the backend gives the same token: Draw()
  // before the step (it advances the Rng exactly as Sample would), with
  // AppendPenalties for its row of the batch, and Accept(token) after it.
  bool needs_logits() const;
  RowSampling Draw();
  // The penalties on this request's next logits as batch row `row`: one
  // per token seen (repetition) or in the output (presence, frequency).
  void AppendPenalties(int32_t row, std::vector<LogitPenalty>* out) const;
  Pick Accept(int32_t token);

  // The same penalties as a row of a penalty table (kernels/sampling.h):
  // whether there are any, the list to fill a row with, the row's
  // parameters, and a token's entry (0, or 1 + its count).
  bool penalised() const { return !entry_of_.empty(); }
  absl::Span<const LogitPenalty> penalties() const { return penalties_; }
  PenaltyRow TableRow(int32_t row, int32_t table_row) const;
  int32_t TableValue(int32_t token) const;

 private:
  void Record(int32_t token);  // the token as part of the output (penalties)

  const GenerationParams& params_;
  int64_t vocab_;
  Rng rng_;
  std::vector<float> work_;
  // The penalised tokens' entry, made on first sight, kept up to date (its
  // count) as the output grows: the list the backend applies, as row 0.
  LogitPenalty& Entry(int32_t token);
  bool counted_ = false;                 // presence or frequency: count the output
  std::vector<int32_t> entry_of_;        // [vocab]: index into penalties_, or −1
  std::vector<LogitPenalty> penalties_;  // in order of first sight
};

// log-softmax of one row: log p(token) for `token`.
float TokenLogprobOf(const float* logits, int64_t vocab, int32_t token);

// The text of a stream of tokens, with stop strings: Push returns the text
// that may be shown now, holding back any tail that could be the start of a
// stop string; when a stop string appears, the text before it is returned
// and stopped() becomes true.
class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, absl::Span<const int32_t> context,
             std::vector<std::string> stop);
  std::string Push(int32_t token);
  // The rest, at the end of the stream (nothing after a stop).
  std::string Finish();
  bool stopped() const { return stopped_; }

 private:
  std::string Emit(bool final);

  StreamDecoder decoder_;
  std::vector<std::string> stop_;
  size_t longest_stop_ = 0;
  std::string text_;     // all decoded text
  size_t emitted_ = 0;   // bytes of text_ already returned
  bool stopped_ = false;
};

}  // namespace fwp::server

namespace fwp::server {

// A prompt's token ids: not empty (unless `allow_empty`), each in
// [0, vocab), at most `max_tokens`. INVALID_ARGUMENT naming `field`.
absl::Status ValidatePrompt(absl::Span<const int32_t> ids, int32_t vocab, int64_t max_tokens,
                            const char* field, bool allow_empty = false);

}  // namespace fwp::server
