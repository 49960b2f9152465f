#include "train/scoring.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace fwp {

absl::StatusOr<Model::Loss> ScoreWindows(Model& model, absl::Span<const int32_t> tokens,
                                         int64_t seq, int64_t batch, int64_t max_windows) {
  if (seq < 1 || batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("windows need seq ≥ 1 and batch ≥ 1, not ", seq, " and ", batch));
  }
  const int64_t all = (static_cast<int64_t>(tokens.size()) - 1) / seq;
  if (all < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        tokens.size(), " tokens are fewer than one window of ", seq, " needs (", seq + 1, ")"));
  }
  const int64_t windows = max_windows > 0 ? std::min(max_windows, all) : all;
  double total = 0;
  int64_t count = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int64_t nb = std::min(batch, windows - w0);
    // [nb, seq]: window w0 + b's tokens, and the same shifted by one.
    const auto in = tokens.subspan(w0 * seq, nb * seq);
    const auto next = tokens.subspan(w0 * seq + 1, nb * seq);
    FWP_ASSIGN_OR_RETURN(Model::Loss loss, model.ForwardBackward(in, next, nb, nullptr));
    total += loss.mean * loss.count;
    count += loss.count;
  }
  return Model::Loss{total / count, count};
}

absl::StatusOr<Model::Loss> ScoreStream(Model& model, absl::Span<const int32_t> tokens,
                                        int64_t piece, int64_t max_predictions) {
  if (piece < 1) return absl::InvalidArgumentError(absl::StrCat("piece must be ≥ 1, not ", piece));
  if (tokens.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(tokens.size(), " tokens are fewer than the 2 one prediction needs"));
  }
  const int64_t all = static_cast<int64_t>(tokens.size()) - 1;
  const int64_t predictions = max_predictions > 0 ? std::min(max_predictions, all) : all;
  FWP_ASSIGN_OR_RETURN(std::unique_ptr<StatePool> carry, model.NewStatePool(1));
  double total = 0;
  int64_t count = 0;
  for (int64_t t0 = 0; t0 < predictions; t0 += piece) {
    const int64_t n = std::min(piece, predictions - t0);
    FWP_ASSIGN_OR_RETURN(Model::Loss loss,
                         model.ForwardBackward(tokens.subspan(t0, n), tokens.subspan(t0 + 1, n),
                                               1, nullptr, carry.get()));
    total += loss.mean * loss.count;
    count += loss.count;
  }
  return Model::Loss{total / count, count};
}

}  // namespace fwp
