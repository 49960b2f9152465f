// Test helpers: fresh random inputs and float64 reference loops, written as
// plainly as possible and independently of the code under test.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/fast_weight.h"
#include "kernels/feature_map.h"
#include "kernels/random.h"
#include "kernels/sampling.h"

namespace fwp::testing {

inline std::vector<float> RandomVector(int64_t n, Rng& rng, double scale = 1.0) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.Normal() * scale);
  return v;
}

// ‖out − ref‖ / ‖ref‖.
template <typename A, typename B>
double RelativeError(const A& out, const B& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(out[i]) - static_cast<double>(ref[i]);
    num += d * d;
    den += static_cast<double>(ref[i]) * static_cast<double>(ref[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

// φ in float64, straight from the definitions in feature_map.h.
template <typename T>
std::vector<double> FeatureMap64(const FeatureMapSpec& s, const T* x, int64_t d,
                                 const float* omega) {
  std::vector<double> phi;
  switch (s.kind) {
    case FeatureMapKind::kDpfp: {
      std::vector<double> r(2 * d);
      for (int64_t i = 0; i < d; ++i) {
        r[i] = std::max(0.0, static_cast<double>(x[i]));
        r[d + i] = std::max(0.0, -static_cast<double>(x[i]));
      }
      for (int j = 1; j <= s.nu; ++j) {
        for (int64_t i = 0; i < 2 * d; ++i) {
          int64_t src = (i - j) % (2 * d);
          if (src < 0) src += 2 * d;
          phi.push_back(r[i] * r[src]);
        }
      }
      break;
    }
    case FeatureMapKind::kElu1:
      for (int64_t i = 0; i < d; ++i) {
        phi.push_back(x[i] > 0 ? x[i] + 1.0 : std::exp(static_cast<double>(x[i])));
      }
      break;
    case FeatureMapKind::kFavor: {
      const int64_t m = s.favor_features;
      double sq = 0.0;
      for (int64_t i = 0; i < d; ++i) sq += static_cast<double>(x[i]) * x[i];
      phi.assign(2 * m, 0.0);
      for (int64_t f = 0; f < m; ++f) {
        double dot = 0.0;
        for (int64_t i = 0; i < d; ++i) dot += static_cast<double>(omega[f * d + i]) * x[i];
        phi[f] = std::exp(dot - sq / 2) / std::sqrt(2.0 * m);
        phi[m + f] = std::exp(-dot - sq / 2) / std::sqrt(2.0 * m);
      }
      break;
    }
    case FeatureMapKind::kRelu:
      for (int64_t i = 0; i < d; ++i) phi.push_back(std::max(0.0, static_cast<double>(x[i])));
      break;
    case FeatureMapKind::kIdentity:
      for (int64_t i = 0; i < d; ++i) phi.push_back(x[i]);
      break;
  }
  if (s.sum_norm) {
    double sum = 0.0;
    for (double p : phi) sum += p;
    if (sum > 0) {
      for (double& p : phi) p /= sum;
    }
  }
  return phi;
}

// The recurrent form in float64 over one sequence of one head.
// rows: projection rows of this head, `stride` apart; s [d_φ·d_head] and
// z [d_φ] are advanced; y gets d_head values per token.
template <typename T>
void FastWeightRecurrence64(const FastWeightSpec& spec, const T* rows, int64_t stride,
                            int64_t time, const float* omega, std::vector<double>& s,
                            std::vector<double>& z, std::vector<double>& y) {
  const int64_t dk = spec.d_head, dv = spec.DValue(), dp = spec.DPhi();
  const double scale = spec.scale != 0.0f ? spec.scale : 1.0 / std::sqrt(static_cast<double>(dk));
  for (int64_t t = 0; t < time; ++t) {
    const T* row = rows + t * stride;
    const auto q = FeatureMap64(spec.phi, row, dk, omega);
    const auto k = FeatureMap64(spec.phi, row + dk, dk, omega);
    std::vector<double> u(dv);
    for (int64_t j = 0; j < dv; ++j) u[j] = row[2 * dk + j];
    if (spec.update == UpdateRule::kDelta) {
      const double beta = 1.0 / (1.0 + std::exp(-static_cast<double>(row[2 * dk + dv])));
      for (int64_t j = 0; j < dv; ++j) {
        double vbar = 0.0;
        for (int64_t i = 0; i < dp; ++i) vbar += s[i * dv + j] * k[i];
        u[j] = beta * (u[j] - vbar);
      }
    }
    for (int64_t i = 0; i < dp; ++i) {
      for (int64_t j = 0; j < dv; ++j) s[i * dv + j] += k[i] * u[j];
    }
    double den = 1.0;
    if (spec.HasNormalizer()) {
      den = 0.0;
      for (int64_t i = 0; i < dp; ++i) {
        z[i] += k[i];
        den += z[i] * q[i];
      }
      if (!(den > 0)) den = 1.0;
    }
    for (int64_t j = 0; j < dv; ++j) {
      double acc = 0.0;
      for (int64_t i = 0; i < dp; ++i) acc += s[i * dv + j] * q[i];
      y.push_back(acc / den * scale);
    }
  }
}

// Central finite differences of `loss` (a float64 function of x) at x.
template <typename F>
std::vector<double> NumericGradient(std::vector<double> x, const F& loss, double h = 1e-6) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss(x);
    x[i] = saved - h;
    const double down = loss(x);
    x[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

inline constexpr FeatureMapKind kAllFeatureMapKinds[] = {
    FeatureMapKind::kDpfp, FeatureMapKind::kElu1, FeatureMapKind::kFavor, FeatureMapKind::kRelu,
    FeatureMapKind::kIdentity};

// Every update rule × feature map combination the model supports.
inline std::vector<FastWeightSpec> AllAttentionVariants(int64_t heads, int64_t d_head) {
  std::vector<FastWeightSpec> out;
  for (UpdateRule rule : {UpdateRule::kDelta, UpdateRule::kSum}) {
    for (FeatureMapKind kind : kAllFeatureMapKinds) {
      FastWeightSpec s;
      s.update = rule;
      s.heads = heads;
      s.d_head = d_head;
      s.phi.kind = kind;
      s.phi.nu = 2;
      s.phi.favor_features = 24;
      s.phi.sum_norm = kind != FeatureMapKind::kIdentity;
      out.push_back(s);
      if (rule == UpdateRule::kSum && kind != FeatureMapKind::kIdentity) {
        s.attention_normalizer = true;  // the linear Transformer's normaliser
        out.push_back(s);
      }
    }
  }
  return out;
}

// Variants whose values are wider or narrower than the keys, with a set
// output scale (the synthetic retrieval task's memory).
inline std::vector<FastWeightSpec> UnequalValueVariants(int64_t heads, int64_t d_head,
                                                        int64_t d_value) {
  std::vector<FastWeightSpec> out;
  for (FastWeightSpec s : AllAttentionVariants(heads, d_head)) {
    if (s.phi.kind != FeatureMapKind::kDpfp && s.phi.kind != FeatureMapKind::kIdentity) continue;
    s.d_value = d_value;
    s.scale = 1.0f;
    out.push_back(s);
  }
  return out;
}

// A batch of sampling rows for the sampler tests: logits [rows, vocab] with
// repeated values (ties, and −0 beside +0), and every kind of row: greedy,
// temperature only, top-k, top-p, min-p and all together, each with a draw.
struct SamplingBatch {
  int64_t rows = 0, vocab = 0;
  std::vector<float> logits;
  std::vector<RowSampling> sampling;
};
inline SamplingBatch RandomSamplingBatch(int64_t rows, int64_t vocab, Rng& rng) {
  SamplingBatch b{rows, vocab, RandomVector(rows * vocab, rng, 3.0), {}};
  for (int64_t i = 0; i < rows * vocab; i += 7) b.logits[i] = b.logits[i / 2];
  for (int64_t r = 0; r < rows && vocab > 2; ++r) {
    b.logits[r * vocab + 1] = 0.0f;
    b.logits[r * vocab + 2] = -0.0f;
  }
  for (int64_t r = 0; r < rows; ++r) {
    RowSampling row;
    SamplingParams& p = row.params;
    switch (r % 6) {
      case 0: break;  // greedy
      case 1: p.temperature = 0.7f; break;
      case 2: p.temperature = 1.3f; p.top_k = 1 + static_cast<int32_t>(rng.Next() % 50); break;
      case 3: p.temperature = 1.0f; p.top_p = 0.9f; break;
      case 4: p.temperature = 0.9f; p.min_p = 0.05f; break;
      case 5: p.temperature = 1.1f; p.top_k = 40; p.top_p = 0.8f; p.min_p = 0.02f; break;
    }
    if (!p.greedy()) row.uniform = rng.Uniform();
    b.sampling.push_back(row);
  }
  return b;
}

// Penalties for a batch of rows × vocab logits: about a tenth of each row's
// tokens, each (row, token) once, with every kind of penalty (repetition
// above and below 1, presence and frequency of either sign, counts from 0).
inline std::vector<LogitPenalty> RandomPenalties(int64_t rows, int64_t vocab, Rng& rng) {
  std::vector<LogitPenalty> out;
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 5 == 4) continue;  // a row without penalties
    const float repetition = r % 3 == 0 ? 1.0f : (r % 3 == 1 ? 1.3f : 0.7f);
    const float presence = r % 2 ? 0.4f : -0.25f, frequency = r % 4 < 2 ? 0.15f : 0.0f;
    for (int64_t t = 0; t < vocab; ++t) {
      if (rng.Next() % 10 != 0) continue;
      out.push_back({static_cast<int32_t>(r), static_cast<int32_t>(t),
                     rng.Next() % 2 ? repetition : 1.0f, static_cast<int32_t>(rng.Next() % 4),
                     presence, frequency});
    }
  }
  // In random order: the result must not depend on it.
  for (size_t i = out.size(); i > 1; --i) std::swap(out[i - 1], out[rng.Next() % i]);
  return out;
}

// Penalties as a request keeps them (one set of parameters a row, every
// listed token under it), both ways: as a LogitPenalty list, and as a
// penalty table of table_rows rows whose row for batch row r is another
// (rows[i].table_row), the other rows filled with noise that must not be read.
struct PenaltyTableCase {
  std::vector<LogitPenalty> list;
  std::vector<int32_t> table;   // [table_rows, vocab]
  std::vector<PenaltyCount> entries;  // what fills the used rows, from zero
  std::vector<PenaltyRow> rows;
};
inline PenaltyTableCase RandomPenaltyTable(int64_t rows, int64_t table_rows, int64_t vocab,
                                           Rng& rng) {
  PenaltyTableCase c;
  c.table.resize(table_rows * vocab);
  for (int32_t& x : c.table) x = static_cast<int32_t>(rng.Next() % 5);
  std::vector<int32_t> order(table_rows);
  for (int64_t i = 0; i < table_rows; ++i) order[i] = static_cast<int32_t>(i);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.Next() % i]);
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 5 == 4) continue;  // a row without penalties
    const float repetition = r % 3 == 0 ? 1.0f : (r % 3 == 1 ? 1.3f : 0.7f);
    const float presence = r % 2 ? 0.4f : -0.25f, frequency = r % 4 < 2 ? 0.15f : 0.0f;
    const int32_t table_row = order[r];
    c.rows.push_back({static_cast<int32_t>(r), table_row, repetition, presence, frequency});
    std::fill(c.table.begin() + table_row * vocab, c.table.begin() + (table_row + 1) * vocab, 0);
    for (int64_t t = 0; t < vocab; ++t) {
      if (rng.Next() % 10 != 0) continue;
      // With repetition off only output tokens are listed (count ≥ 1).
      const auto count = static_cast<int32_t>(rng.Next() % 4) + (repetition == 1.0f ? 1 : 0);
      c.list.push_back({static_cast<int32_t>(r), static_cast<int32_t>(t), repetition, count,
                        presence, frequency});
      c.table[table_row * vocab + t] = count + 1;
      c.entries.push_back({table_row, static_cast<int32_t>(t), count + 1});
    }
  }
  for (size_t i = c.rows.size(); i > 1; --i) std::swap(c.rows[i - 1], c.rows[rng.Next() % i]);
  return c;
}

// Logits that stress the sampler's cut-offs, by kind: 0 leaves them; 1
// rounds them to a few values (cut-offs inside groups of equal logits); 2
// squeezes them within 1e-3 of 5 (every radix digit of the order decides);
// 3 makes a tenth NaN and a fiftieth ±∞.
inline void ShapeSamplingLogits(std::vector<float>& logits, int kind, Rng& rng) {
  for (float& x : logits) {
    if (kind == 1) x = std::round(x);
    if (kind == 2) x = 5.0f + 1e-4f * x;
    if (kind == 3 && rng.Next() % 10 == 0) x = std::nanf("");
    if (kind == 3 && rng.Next() % 50 == 0) x = rng.Next() % 2 ? INFINITY : -INFINITY;
  }
}

}  // namespace fwp::testing
