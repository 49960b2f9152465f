// The engine's penalty table: a row of counts in backend memory per state
// slot (kernels/sampling.h's table, row = the slot of the session a request
// decodes in), so that a penalised request sends its whole list of seen tokens
// once, when its row is filled, and then one entry a step (the token it drew)
// instead of the list every step.
//
// Changes are queued on the host and sent by Flush before the step that
// reads them. The table is allocated on first use; if that fails (device
// memory) it stays unavailable and requests send their lists as before.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "kernels/sampling.h"

namespace fwp {

class PenaltyTable {
 public:
  PenaltyTable(Backend& backend, int64_t rows, int64_t vocab)
      : backend_(backend), rows_(rows), vocab_(vocab) {}

  // Row `row` holds `list` (a request's penalties) alone from the next Flush
  // on. Fails when the table cannot be allocated.
  absl::Status Assign(int32_t row, absl::Span<const LogitPenalty> list);
  // Entry (row, token) becomes value at the next Flush.
  void Set(int32_t row, int32_t token, int32_t value);
  // Sends the queued entries. On failure (no device memory for the upload)
  // they are lost: every row must be assigned again, which generation()
  // tells by changing.
  absl::Status Flush();

  // Bytes of one row (the table holds one per state slot).
  static int64_t RowBytes(int64_t vocab) { return vocab * static_cast<int64_t>(sizeof(int32_t)); }
  int64_t bytes() const { return rows_ * RowBytes(vocab_); }

  const int32_t* data() const { return static_cast<const int32_t*>(table_.data()); }
  int64_t rows() const { return rows_; }
  uint64_t generation() const { return generation_; }
  // Bytes queued for the next Flush (what crosses to the device).
  int64_t pending_bytes() const {
    return static_cast<int64_t>(pending_.size() * sizeof(PenaltyCount));
  }

 private:
  Backend& backend_;
  const int64_t rows_, vocab_;
  Buffer table_;
  bool unavailable_ = false;
  uint64_t generation_ = 0;
  std::vector<PenaltyCount> pending_;
};

}  // namespace fwp
