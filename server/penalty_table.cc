#include "server/penalty_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace fwp {

absl::Status PenaltyTable::Assign(int32_t row, absl::Span<const LogitPenalty> list) {
  if (row < 0 || row >= rows_) {
    return absl::InvalidArgumentError(
        absl::StrCat("penalty table row ", row, " is outside its ", rows_, " rows"));
  }
  if (unavailable_) return absl::ResourceExhaustedError("no memory for the penalty table");
  if (table_.data() == nullptr) {
    auto table = Buffer::Allocate(backend_, bytes());
    if (!table.ok()) {
      unavailable_ = true;
      return table.status();
    }
    table_ = *std::move(table);
  }
  // What was queued for the row's previous request must not land after the
  // row is cleared.
  std::erase_if(pending_, [&](const PenaltyCount& e) { return e.table_row == row; });
  backend_.Zero(static_cast<int32_t*>(table_.data()) + row * vocab_, vocab_ * sizeof(int32_t));
  for (const LogitPenalty& p : list) pending_.push_back({row, p.token, p.count + 1});
  return absl::OkStatus();
}

void PenaltyTable::Set(int32_t row, int32_t token, int32_t value) {
  pending_.push_back({row, token, value});
}

absl::Status PenaltyTable::Flush() {
  if (pending_.empty()) return absl::OkStatus();
  // Each place once a call: the last value queued for it.
  std::stable_sort(pending_.begin(), pending_.end(),
                   [](const PenaltyCount& a, const PenaltyCount& b) {
                     return a.table_row != b.table_row ? a.table_row < b.table_row
                                                       : a.token < b.token;
                   });
  size_t kept = 0;
  for (size_t i = 0; i < pending_.size(); ++i) {
    if (i + 1 < pending_.size() && pending_[i + 1].table_row == pending_[i].table_row &&
        pending_[i + 1].token == pending_[i].token) {
      continue;
    }
    pending_[kept++] = pending_[i];
  }
  pending_.resize(kept);
  absl::Status status = backend_.SetPenaltyCounts(static_cast<int32_t*>(table_.data()), vocab_,
                                                  pending_.data(),
                                                  static_cast<int64_t>(pending_.size()));
  pending_.clear();
  if (!status.ok()) ++generation_;
  return status;
}

}  // namespace fwp
