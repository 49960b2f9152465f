// The mean next-token loss (nats per token) of a token stream, read the two
// ways fwp-eval and fwp-train's evaluations read a split:
//
//   windows: contiguous windows of `seq` tokens, each from an empty state
//            (window w predicts tokens[w·seq + 1 … (w+1)·seq]), `batch`
//            windows per pass: what a model trained on windows was taught;
//   stream:  the whole split as one sequence, the state carried throughout,
//            every prediction seeing all that came before it (a long server
//            session; what a model trained with carry_state was taught).
//
// Both run the model's training form without gradients.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/model.h"

namespace fwp {

// The first `max_windows` windows (0: every whole window). Refused when
// `tokens` holds fewer than seq + 1 tokens.
absl::StatusOr<Model::Loss> ScoreWindows(Model& model, absl::Span<const int32_t> tokens,
                                         int64_t seq, int64_t batch, int64_t max_windows = 0);

// The first `max_predictions` predictions (0: all, tokens.size() − 1), in
// passes of `piece` tokens. Refused when `tokens` holds fewer than 2.
absl::StatusOr<Model::Loss> ScoreStream(Model& model, absl::Span<const int32_t> tokens,
                                        int64_t piece = 512, int64_t max_predictions = 0);

}  // namespace fwp
