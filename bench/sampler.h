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

// Penalties as a chat request carries them: `per_row` distinct seen tokens
// (a long prompt's) under repetition 1.1, a few of them also in the output.
inline std::vector<LogitPenalty> MakeChatPenalties(int64_t rows, int64_t vocab, int64_t per_row,
                                                   Rng& rng) {
  std::vector<LogitPenalty> out;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = static_cast<int64_t>(rng.Next() % vocab);
    for (int64_t i = 0; i < per_row; ++i) {
      out.push_back({static_cast<int32_t>(r), static_cast<int32_t>((start + i * 7) % vocab), 1.1f,
                     i % 10 == 0 ? 1 : 0, 0.0f, 0.0f});
    }
  }
  return out;
}

// Seconds per ApplyPenalties call over `logits` (backend memory, changed).
inline double TimeApplyPenalties(Backend& backend, float* logits, int64_t vocab,
                                 const std::vector<LogitPenalty>& penalties, double seconds) {
  return TimePerCall(seconds, [&] {
    if (!backend.ApplyPenalties(logits, vocab, penalties.data(),
                                static_cast<int64_t>(penalties.size())).ok()) {
      std::abort();
    }
  }, &backend);
}

// The same penalties as a penalty table (a row per request) and what one
// decode step sends it: an entry a row (the token just drawn).
struct ChatPenaltyTable {
  std::vector<int32_t> table;  // [rows, vocab]
  std::vector<PenaltyRow> rows;
  std::vector<PenaltyCount> step;
};
inline ChatPenaltyTable MakeChatPenaltyTable(int64_t rows, int64_t vocab,
                                             const std::vector<LogitPenalty>& list) {
  ChatPenaltyTable t;
  t.table.assign(rows * vocab, 0);
  for (const LogitPenalty& p : list) t.table[p.row * vocab + p.token] = p.count + 1;
  for (int64_t r = 0; r < rows; ++r) {
    t.rows.push_back({static_cast<int32_t>(r), static_cast<int32_t>(r), 1.1f, 0.0f, 0.0f});
  }
  for (const LogitPenalty& p : list) {
    if (static_cast<int64_t>(t.step.size()) == p.row) {
      t.step.push_back({p.row, p.token, p.count + 2});
    }
  }
  return t;
}

// Seconds per decode step's table work: SetPenaltyCounts of the step's
// entries, then ApplyPenaltyRows; table is backend memory holding t.table.
inline double TimeApplyPenaltyRows(Backend& backend, float* logits, int64_t vocab, int32_t* table,
                                   const ChatPenaltyTable& t, double seconds) {
  return TimePerCall(seconds, [&] {
    if (!backend.SetPenaltyCounts(table, vocab, t.step.data(),
                                  static_cast<int64_t>(t.step.size())).ok() ||
        !backend.ApplyPenaltyRows(logits, vocab, table, t.rows.data(),
                                  static_cast<int64_t>(t.rows.size())).ok()) {
      std::abort();
    }
  }, &backend);
}

}  // namespace fwp::bench
