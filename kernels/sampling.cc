#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/shared_math.h"
#include "kernels/thread_pool.h"

namespace fwp {

absl::Status ValidateSamplingParams(const SamplingParams& s, absl::string_view prefix) {
  const auto bad = [prefix](auto... parts) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, parts...));
  };
  if (!(s.temperature >= 0.0f) || !std::isfinite(s.temperature)) {
    return bad("temperature must be a finite number ≥ 0, got ", s.temperature);
  }
  if (s.top_k < 0) return bad("top_k must be ≥ 0, got ", s.top_k);
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) return bad("top_p must be in (0, 1], got ", s.top_p);
  if (!(s.min_p >= 0.0f && s.min_p < 1.0f)) return bad("min_p must be in [0, 1), got ", s.min_p);
  return absl::OkStatus();
}

}  // namespace fwp

namespace fwp::cpu {
namespace {

// The per-element loops are compiled twice (x86-64-v3 and the baseline; the
// loader picks).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FWP_SAMPLER_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FWP_SAMPLER_CLONES
#endif

// Σ weight[i] over ids [begin, end) with weight ≥ least and key ≤ limit
// (branch-free, so it runs four ids at a time).
FWP_SAMPLER_CLONES uint64_t KeptWeight(const uint32_t* order, const uint64_t* weight,
                                       int64_t begin, int64_t end, uint64_t least,
                                       uint64_t limit) {
  uint64_t total = 0;
  for (int64_t i = begin; i < end; ++i) {
    const bool kept = weight[i] >= least && math::SampleKey(order[i], i) <= limit;
    total += kept ? weight[i] : 0;
  }
  return total;
}

using Candidates = math::SampleCandidates;

// The smallest key K such that the candidates with keys ≤ K (and ≤ limit)
// weigh at least `target`: radix selection on the order, 11, 11 and 10 bits
// from the top, each pass over the ids left in the bucket where the running
// weight crosses the target, then the equal orders in id order. `limit` when
// the target is out of reach.
uint64_t SelectKey(const Candidates& c, uint64_t target) {
  constexpr int kShift[3] = {21, 10, 0};
  thread_local std::vector<int32_t> ids, next;
  uint32_t prefix = 0, mask = 0;
  uint64_t before = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShift[pass];
    const uint32_t digits = pass == 2 ? 0x3ffu : 0x7ffu;
    uint64_t weight[0x800] = {};
    const auto add = [&](int64_t i) {
      if (c.In(i) && (c.order[i] & mask) == prefix) {
        weight[(c.order[i] >> shift) & digits] += c.Weight(i);
      }
    };
    if (pass == 0 && c.limit == ~uint64_t{0}) {  // every id takes part
      for (int64_t i = 0; i < c.vocab; ++i) weight[c.order[i] >> shift] += c.Weight(i);
    } else if (pass == 0) {
      for (int64_t i = 0; i < c.vocab; ++i) add(i);
    } else {
      for (const int32_t i : ids) add(i);
    }
    uint32_t digit = 0;
    while (digit <= digits && before + weight[digit] < target) before += weight[digit++];
    if (digit > digits) return c.limit;
    prefix |= digit << shift;
    mask |= digits << shift;
    next.clear();
    const auto keep = [&](int64_t i) {
      if (c.In(i) && (c.order[i] & mask) == prefix) next.push_back(static_cast<int32_t>(i));
    };
    if (pass == 0 && c.limit == ~uint64_t{0}) {
      for (int64_t i = 0; i < c.vocab; ++i) {
        if ((c.order[i] & mask) == prefix) next.push_back(static_cast<int32_t>(i));
      }
    } else if (pass == 0) {
      for (int64_t i = 0; i < c.vocab; ++i) keep(i);
    } else {
      for (const int32_t i : ids) keep(i);
    }
    std::swap(ids, next);
  }
  for (const int32_t i : ids) {  // one order, ids ascending
    before += c.Weight(i);
    if (before >= target) return math::SampleKey(prefix, i);
  }
  return c.limit;
}

// The candidates' orders and weights: math::CandidateWeight is branch-free,
// so the loop runs on four doubles at a time (given -fno-trapping-math, which
// lets GCC turn its comparisons into selects). -ffp-contract=off keeps every
// step rounded as the GPU rounds it (both flags: CMakeLists.txt).
FWP_SAMPLER_CLONES void Weigh(const float* logits, int64_t vocab, float top, double inv_t, int bits,
           uint32_t* order, uint64_t* weight) {
  for (int64_t i = 0; i < vocab; ++i) order[i] = math::SampleOrder(logits[i]);
  for (int64_t i = 0; i < vocab; ++i) weight[i] = math::CandidateWeight(logits[i], top, inv_t, bits);
}

// The largest logit, NaNs passed over; −∞ when there is none. Eight lanes
// (GCC does not vectorise a NaN-aware max by itself); any lane order gives
// the same value up to the sign of a zero, which no use of it can see.
#pragma GCC diagnostic ignored "-Wpsabi"
using v8 = float __attribute__((vector_size(32)));
FWP_SAMPLER_CLONES float Largest(const float* logits, int64_t vocab) {
  v8 lanes = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
              -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int64_t i = 0;
  for (; i + 8 <= vocab; i += 8) {
    v8 x;
    std::memcpy(&x, logits + i, sizeof x);
    lanes = x > lanes ? x : lanes;
  }
  float top = -INFINITY;
  for (int j = 0; j < 8; ++j) top = lanes[j] > top ? lanes[j] : top;
  for (; i < vocab; ++i) top = logits[i] > top ? logits[i] : top;
  return top;
}

}  // namespace

// The first id of the largest logit (as `logits[i] > logits[best]` from
// best = 0 would find it: NaNs are passed over, a NaN at 0 wins).
int32_t Argmax(const float* logits, int64_t vocab) {
  if (std::isnan(logits[0])) return 0;
  const float top = Largest(logits, vocab);
  return static_cast<int32_t>(std::find(logits, logits + vocab, top) - logits);
}

int32_t SampleToken(const float* logits, int64_t vocab,
                    const SamplingParams& params, Rng& rng) {
  if (params.greedy()) return Argmax(logits, vocab);
  return SampleWithDraw(logits, vocab, params, rng.Uniform());
}

void ApplyPenalties(float* logits, int64_t vocab, const LogitPenalty* penalties, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const LogitPenalty& p = penalties[i];
    float& x = logits[p.row * vocab + p.token];
    x = math::PenalisedLogit(x, p.repetition, p.count, p.presence, p.frequency);
  }
}

void SetPenaltyCounts(int32_t* table, int64_t vocab, const PenaltyCount* entries, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    table[entries[i].table_row * vocab + entries[i].token] = entries[i].value;
  }
}

void ApplyPenaltyRows(float* logits, int64_t vocab, const int32_t* table, const PenaltyRow* rows,
                      int64_t n) {
  CpuThreadPool().ParallelFor(n, [&](int64_t i) {
    const PenaltyRow& r = rows[i];
    float* x = logits + r.row * vocab;
    const int32_t* counts = table + r.table_row * vocab;
    for (int64_t t = 0; t < vocab; ++t) {
      if (counts[t] > 0) {
        x[t] = math::PenalisedLogit(x[t], r.repetition, counts[t] - 1, r.presence, r.frequency);
      }
    }
  });
}

void SampleRows(const float* logits, int64_t rows, int64_t vocab, const RowSampling* sampling,
                int32_t* tokens) {
  CpuThreadPool().ParallelFor(rows, [&](int64_t i) {
    tokens[i] = SampleWithDraw(logits + i * vocab, vocab, sampling[i].params, sampling[i].uniform);
  });
}

int32_t SampleWithDraw(const float* logits, int64_t vocab, const SamplingParams& params,
                       double uniform) {
  if (params.greedy()) return Argmax(logits, vocab);
  const float top = Largest(logits, vocab);
  if (top == -INFINITY && std::all_of(logits, logits + vocab, [](float x) { return std::isnan(x); })) {
    return 0;
  }
  thread_local std::vector<uint32_t> order;
  thread_local std::vector<uint64_t> weight;
  order.resize(vocab);
  weight.resize(vocab);
  const int bits = math::WeightBits(vocab);
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  Weigh(logits, vocab, top, inv_t, bits, order.data(), weight.data());
  Candidates c{order.data(), nullptr, vocab, ~uint64_t{0}};
  if (params.top_k > 0 && params.top_k < vocab) c.limit = SelectKey(c, params.top_k);
  c.weight = weight.data();
  if (params.top_p < 1.0f) {
    const uint64_t total = KeptWeight(order.data(), weight.data(), 0, vocab, 0, c.limit);
    c.limit = SelectKey(c, math::TopPTarget(params.top_p, total));
  }
  // The draw: sums over blocks of ids find the block, then its ids one by one.
  const uint64_t least = math::MinPWeight(params.min_p, bits);
  const auto kept = [&](int64_t begin, int64_t end) {
    return KeptWeight(order.data(), weight.data(), begin, end, least, c.limit);
  };
  uint64_t r = math::DrawPoint(uniform, kept(0, vocab));
  constexpr int64_t kBlock = 512;
  for (int64_t begin = 0; begin < vocab; begin += kBlock) {
    const int64_t end = std::min(vocab, begin + kBlock);
    const uint64_t block = kept(begin, end);
    if (r >= block) {
      r -= block;
      continue;
    }
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t w = kept(i, i + 1);
      if (r < w) return static_cast<int32_t>(i);
      r -= w;
    }
  }
  return Argmax(logits, vocab);  // not reached: r < total
}

}  // namespace fwp::cpu
