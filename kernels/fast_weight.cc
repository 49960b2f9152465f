#include "kernels/fast_weight.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/shared_math.h"
#include "kernels/thread_pool.h"

namespace fwp {

const char* UpdateRuleName(UpdateRule rule) {
  return rule == UpdateRule::kDelta ? "delta" : "sum";
}

std::optional<UpdateRule> UpdateRuleFromName(std::string_view name) {
  for (UpdateRule rule : {UpdateRule::kDelta, UpdateRule::kSum}) {
    if (name == UpdateRuleName(rule)) return rule;
  }
  return std::nullopt;
}

float FastWeightSpec::Scale() const {
  return scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(d_head));
}

}  // namespace fwp

namespace fwp::cpu {
namespace {

using math::Sigmoid;

// Row-major C[m, n] = alpha · op(A) · op(B) + beta · C, through BLAS.
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

// Scratch for one chunk of one head; reused across chunks and calls.
struct ChunkScratch {
  std::vector<float> phi_q, phi_k, u, beta, kk, qk;
  void Resize(int64_t c, int64_t d_phi, int64_t d_head) {
    phi_q.resize(c * d_phi);
    phi_k.resize(c * d_phi);
    u.resize(c * d_head);
    beta.resize(c);
    kk.resize(c * c);
    qk.resize(c * c);
  }
};

// What a chunk of `c` tokens of one head writes, from S₀ = s [d_φ, d_value]:
// Φq, Φk [c, d_φ], β, the updates u [c, d_value] (the delta rule's solve of
// (I + diag(β) K) u = diag(β)(V − Φk S₀), K = strictly-tril(Φk Φkᵀ) left in
// kk; the sum rule's V) and qk = tril(Φq Φkᵀ), all [c, c] with rows c apart.
// With vmp (delta rule), also V − Φk S₀ [c, d_value]. Projection rows start at
// `rows`, `row_stride` apart.
void PrepareChunk(const FastWeightSpec& spec, const float* rows, int64_t row_stride,
                  const float* favor_proj, int64_t c, const float* s, ChunkScratch& w,
                  float* vmp) {
  const int64_t dk = spec.d_head, dv = spec.DValue(), dp = spec.DPhi();
  const bool delta = spec.update == UpdateRule::kDelta;
  for (int64_t t = 0; t < c; ++t) {
    const float* row = rows + t * row_stride;
    FeatureMapRow(spec.phi, row, dk, favor_proj, &w.phi_q[t * dp]);
    FeatureMapRow(spec.phi, row + dk, dk, favor_proj, &w.phi_k[t * dp]);
    std::copy(row + 2 * dk, row + 2 * dk + dv, &w.u[t * dv]);
    if (delta) w.beta[t] = Sigmoid(row[2 * dk + dv]);
  }
  float* u = w.u.data();  // [c, d_value]
  if (delta) {
    // u_t = β_t (v_t − S₀ᵀφk_t − Σ_{τ<t} (φk_τ·φk_t) u_τ)
    Gemm(false, false, c, dv, dp, -1.0f, w.phi_k.data(), dp, s, dv, 1.0f, u, dv);
    if (vmp) std::copy(u, u + c * dv, vmp);
    Gemm(false, true, c, c, dp, 1.0f, w.phi_k.data(), dp, w.phi_k.data(), dp,
         0.0f, w.kk.data(), c);
    for (int64_t t = 0; t < c; ++t) {
      float* ut = u + t * dv;
      float* kk_row = &w.kk[t * c];
      std::fill(kk_row + t, kk_row + c, 0.0f);  // strictly lower
      for (int64_t tau = 0; tau < t; ++tau) {
        const float a = kk_row[tau];
        const float* uprev = u + tau * dv;
        for (int64_t j = 0; j < dv; ++j) ut[j] -= a * uprev[j];
      }
      for (int64_t j = 0; j < dv; ++j) ut[j] *= w.beta[t];
    }
  }
  // qk = tril(Φq Φkᵀ) [c, c]: token t reads the writes of τ ≤ t.
  Gemm(false, true, c, c, dp, 1.0f, w.phi_q.data(), dp, w.phi_k.data(), dp,
       0.0f, w.qk.data(), c);
  for (int64_t t = 0; t < c; ++t) {
    std::fill(&w.qk[t * c + t + 1], &w.qk[(t + 1) * c], 0.0f);
  }
}

// One chunk of `c` tokens of one head. Projection rows start at `rows`,
// `row_stride` apart; outputs go to rows of y, `y_stride` apart.
// s: [d_φ, d_head] and z: [d_φ] (or null) are advanced past the chunk.
void SequenceChunk(const FastWeightSpec& spec, const float* rows,
                   int64_t row_stride, const float* favor_proj, int64_t c,
                   float* s, float* z, float* y, int64_t y_stride,
                   ChunkScratch& w) {
  const int64_t dv = spec.DValue(), dp = spec.DPhi();
  const float scale = spec.Scale();
  PrepareChunk(spec, rows, row_stride, favor_proj, c, s, w, nullptr);
  const float* u = w.u.data();
  // y = Φq S₀ + qk · u, straight into the output rows.
  Gemm(false, false, c, dv, dp, 1.0f, w.phi_q.data(), dp, s, dv, 0.0f, y, y_stride);
  Gemm(false, false, c, dv, c, 1.0f, w.qk.data(), c, u, dv, 1.0f, y, y_stride);
  if (spec.HasNormalizer()) {
    // den_t = φq_t·z₀ + Σ_{τ≤t} φq_t·φk_τ = φq_t·z_t.
    for (int64_t t = 0; t < c; ++t) {
      const float* pq = &w.phi_q[t * dp];
      float den = 0.0f;
      for (int64_t i = 0; i < dp; ++i) den += pq[i] * z[i];
      for (int64_t tau = 0; tau <= t; ++tau) den += w.qk[t * c + tau];
      float* yt = y + t * y_stride;
      const float f = den > 0.0f ? scale / den : scale;
      for (int64_t j = 0; j < dv; ++j) yt[j] *= f;
    }
    for (int64_t t = 0; t < c; ++t) {
      const float* pk = &w.phi_k[t * dp];
      for (int64_t i = 0; i < dp; ++i) z[i] += pk[i];
    }
  } else {
    for (int64_t t = 0; t < c; ++t) {
      float* yt = y + t * y_stride;
      for (int64_t j = 0; j < dv; ++j) yt[j] *= scale;
    }
  }
  // S = S₀ + Φkᵀ u.
  Gemm(true, false, dp, dv, c, 1.0f, w.phi_k.data(), dp, u, dv, 1.0f, s, dv);
}

}  // namespace

void FastWeightSequence(const FastWeightSpec& spec, const float* qkvb,
                        const float* favor_proj, const int32_t* slots,
                        int64_t batch, int64_t time, const StateView& state,
                        float* y, int64_t chunk) {
  const int64_t dv = spec.DValue();
  const int64_t dp = spec.DPhi();
  const int64_t row_width = spec.RowWidth();
  const int64_t y_width = spec.heads * dv;
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  // (sequence, head) pairs are independent: one task each.
  CpuThreadPool().ParallelFor(batch * spec.heads, [&](int64_t task) {
    const int64_t b = task / spec.heads, h = task % spec.heads;
    thread_local ChunkScratch scratch;
    scratch.Resize(chunk, dp, dv);
    float* slot = state.base + static_cast<int64_t>(slots[b]) * state.slot_floats;
    float* s = slot + state.s_offset + h * dp * dv;
    float* z = spec.HasNormalizer() ? slot + state.z_offset + h * dp : nullptr;
    for (int64_t t0 = 0; t0 < time; t0 += chunk) {
      const int64_t c = std::min(chunk, time - t0);
      const int64_t token = b * time + t0;
      SequenceChunk(spec, qkvb + token * row_width + h * spec.HeadWidth(), row_width,
                    favor_proj, c, s, z, y + token * y_width + h * dv, y_width, scratch);
    }
  });
}

namespace {

// The backward's recurrent work is a few passes over rows of d_value floats
// per token; it is compiled twice (x86-64-v3: AVX2 + FMA, and the baseline)
// and the loader picks the one the CPU runs. Its loops are written on
// 8-float vectors, so reductions keep eight partial sums.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FWP_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FWP_VECTOR_CLONES
#endif

// The helpers below are always inlined, so passing 8-float vectors by value
// crosses no ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"
using v8 = float __attribute__((vector_size(32)));

inline v8 Load(const float* p) {
  v8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }
inline v8 Broadcast(float x) { return v8{} + x; }
inline float Sum(v8 v) {
  float s = 0.0f;
  for (int l = 0; l < 8; ++l) s += v[l];
  return s;
}

// out += a · x (rows of d_value).
inline void AddScaled(float* out, float a, const float* x, int64_t n) {
  const v8 av = Broadcast(a);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) Store(out + j, Load(out + j) + av * Load(x + j));
  for (; j < n; ++j) out[j] += a * x[j];
}

inline float Dot(const float* a, const float* b, int64_t n) {
  v8 acc{};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) acc += Load(a + j) * Load(b + j);
  float s = Sum(acc);
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// One token of the recurrence from S_{t−1}: φq, φk, β, v − v̄ and the update
// u; S_t = S_{t−1} + φk uᵀ (and z_t = z_{t−1} + φk) written out of place.
struct TokenValues {
  std::vector<float> phi_q, phi_k, u, v_minus_vbar;
  float beta = 1.0f;
};

FWP_VECTOR_CLONES
void RecomputeToken(const FastWeightSpec& spec, const float* row, const float* favor_proj,
                    const float* s_prev, const float* z_prev, float* s_next, float* z_next,
                    TokenValues& tv) {
  const int64_t dk = spec.d_head, dv = spec.DValue(), dp = spec.DPhi();
  tv.phi_q.resize(dp);
  tv.phi_k.resize(dp);
  tv.u.resize(dv);
  tv.v_minus_vbar.resize(dv);
  FeatureMapRow(spec.phi, row, dk, favor_proj, tv.phi_q.data());
  FeatureMapRow(spec.phi, row + dk, dk, favor_proj, tv.phi_k.data());
  float* u = tv.u.data();
  const float* pk = tv.phi_k.data();
  std::copy(row + 2 * dk, row + 2 * dk + dv, u);
  if (spec.update == UpdateRule::kDelta) {
    tv.beta = Sigmoid(row[2 * dk + dv]);
    // v̄ = S_{t−1}ᵀφk, walking S by contiguous rows.
    float* vbar = tv.v_minus_vbar.data();
    std::fill(vbar, vbar + dv, 0.0f);
    for (int64_t r = 0; r < dp; ++r) AddScaled(vbar, pk[r], s_prev + r * dv, dv);
    for (int64_t j = 0; j < dv; ++j) {
      vbar[j] = u[j] - vbar[j];
      u[j] = tv.beta * vbar[j];
    }
  }
  for (int64_t r = 0; r < dp; ++r) {
    const float* prev = s_prev + r * dv;
    float* next = s_next + r * dv;
    const v8 kv = Broadcast(pk[r]);
    int64_t j = 0;
    for (; j + 8 <= dv; j += 8) Store(next + j, Load(prev + j) + kv * Load(u + j));
    for (; j < dv; ++j) next[j] = prev[j] + pk[r] * u[j];
  }
  if (z_next != nullptr) {
    for (int64_t r = 0; r < dp; ++r) z_next[r] = z_prev[r] + pk[r];
  }
}

// Per-(sequence, head) gradient state of the backward and its scratch.
struct BackwardState {
  std::vector<float> ds, dz, dn, du, dvbar, numer, dphi_q, dphi_k;
};

// One token backwards: from ∂L/∂y_t and ∂L/∂(S_t, z_t) in g, writes the
// token's row of dqkvb and leaves ∂L/∂(S_{t−1}, z_{t−1}) in g.
FWP_VECTOR_CLONES
void BackwardToken(const FastWeightSpec& spec, const float* row, const float* favor_proj,
                   const TokenValues& tv, const float* st, const float* zt, const float* sp,
                   const float* dyt, BackwardState& g, float* drow) {
  const int64_t dk = spec.d_head, dv = spec.DValue(), dp = spec.DPhi();
  const bool has_z = spec.HasNormalizer();
  const float* pq = tv.phi_q.data();
  const float* pk = tv.phi_k.data();
  const float* u = tv.u.data();
  float* ds = g.ds.data();
  float* dz = g.dz.data();
  float* dn = g.dn.data();
  float* du = g.du.data();
  // y = factor · S_tᵀφq, factor = scale (or scale / (z_t·φq)).
  float factor = spec.Scale(), dden = 0.0f;
  bool normalised = false;
  if (has_z) {
    const float den = Dot(zt, pq, dp);
    if (den > 0.0f) {
      normalised = true;
      factor /= den;
      // ∂L/∂den = −Σ_j dy_j y_j / den, with y = factor · S_tᵀφq.
      float* numer = g.numer.data();
      std::fill(numer, numer + dv, 0.0f);
      for (int64_t r = 0; r < dp; ++r) AddScaled(numer, pq[r], st + r * dv, dv);
      dden = -Dot(dyt, numer, dv) * factor / den;
    }
  }
  for (int64_t j = 0; j < dv; ++j) dn[j] = dyt[j] * factor;
  // One pass over the rows of S_t and dS, row r at a time:
  //   φq gets S_t dn (+ z_t dden); S_t gets φq dnᵀ; z_t gets φq dden;
  //   then S_t = S_{t−1} + φk uᵀ: du = dS_tᵀφk, dφk = dS_t u (+ dz_t).
  std::fill(du, du + dv, 0.0f);
  for (int64_t r = 0; r < dp; ++r) {
    const float* str = st + r * dv;
    float* dsr = ds + r * dv;
    const float q = pq[r], k = pk[r];
    const v8 qv = Broadcast(q), kv = Broadcast(k);
    v8 acc_q{}, acc_k{};
    int64_t j = 0;
    for (; j + 8 <= dv; j += 8) {
      const v8 dnv = Load(dn + j);
      const v8 d = Load(dsr + j) + qv * dnv;
      Store(dsr + j, d);
      acc_q += Load(str + j) * dnv;
      Store(du + j, Load(du + j) + d * kv);
      acc_k += d * Load(u + j);
    }
    float sum_q = Sum(acc_q), sum_k = Sum(acc_k);
    for (; j < dv; ++j) {
      sum_q += str[j] * dn[j];
      const float d = dsr[j] + q * dn[j];
      dsr[j] = d;
      du[j] += d * k;
      sum_k += d * u[j];
    }
    g.dphi_q[r] = sum_q + (normalised ? zt[r] * dden : 0.0f);
    if (normalised) dz[r] += q * dden;
    g.dphi_k[r] = sum_k + (has_z ? dz[r] : 0.0f);
  }
  if (spec.update == UpdateRule::kDelta) {
    // u = β (v − v̄), v̄ = S_{t−1}ᵀφk: dS_{t−1} = dS_t + φk dv̄ᵀ, dφk += S_{t−1} dv̄.
    const float beta = tv.beta;
    float* dvbar = g.dvbar.data();
    for (int64_t j = 0; j < dv; ++j) {
      drow[2 * dk + j] = beta * du[j];
      dvbar[j] = -beta * du[j];
    }
    const float dbeta = Dot(du, tv.v_minus_vbar.data(), dv);
    drow[2 * dk + dv] = dbeta * beta * (1.0f - beta);
    for (int64_t r = 0; r < dp; ++r) {
      g.dphi_k[r] += Dot(sp + r * dv, dvbar, dv);
      AddScaled(ds + r * dv, pk[r], dvbar, dv);
    }
  } else {
    std::copy(du, du + dv, drow + 2 * dk);
  }
  FeatureMapRowBackward(spec.phi, row, dk, favor_proj, g.dphi_q.data(), drow);
  FeatureMapRowBackward(spec.phi, row + dk, dk, favor_proj, g.dphi_k.data(), drow + dk);
}

}  // namespace

namespace {

// One chunk of n tokens backwards by the chunkwise form (the CUDA backend's
// ChunkBackwardKernel does the same products; its comment has the
// derivation): from S₀, z₀ (the chunk's start), ∂L/∂y of its rows and
// ∂L/∂(S, z) at its end in ds, dz, writes the chunk's rows of dqkvb and
// leaves ∂L/∂(S₀, z₀) in ds, dz.
struct ChunkBackwardScratch {
  ChunkScratch forward;
  std::vector<float> vmp, dyf, du, d, dphq, dphk, num, inv_den, dd;
};

void ChunkBackward(const FastWeightSpec& spec, const float* rows, int64_t row_width,
                   const float* favor_proj, int64_t n, const float* s0, const float* z0,
                   const float* dy, int64_t y_width, float* ds, float* dz, float* drows,
                   ChunkBackwardScratch& w) {
  const int64_t dk = spec.d_head, dv = spec.DValue(), dp = spec.DPhi();
  const bool delta = spec.update == UpdateRule::kDelta, norm = spec.HasNormalizer();
  const float scale = spec.Scale();
  for (auto* v : {&w.dphq, &w.dphk}) v->assign(n * dp, 0.0f);
  for (auto* v : {&w.vmp, &w.dyf, &w.du, &w.num}) v->assign(n * dv, 0.0f);
  w.d.assign(n * n, 0.0f);
  for (auto* v : {&w.inv_den, &w.dd}) v->assign(n, 0.0f);
  // The chunk again: Φq, Φk, β, U (and V − Φk S₀), G = tril(Φq Φkᵀ), K.
  ChunkScratch& f = w.forward;
  f.Resize(n, dp, dv);
  PrepareChunk(spec, rows, row_width, favor_proj, n, s0, f, w.vmp.data());
  const float *phq = f.phi_q.data(), *phk = f.phi_k.data(), *u = f.u.data();
  const float *g = f.qk.data(), *kk = f.kk.data(), *beta = f.beta.data();
  float *d = w.d.data(), *du = w.du.data(), *dyf = w.dyf.data();

  // dY = f·dy; with the normaliser, dd = ∂L/∂den from num = Φq S₀ + G U.
  for (int64_t t = 0; t < n; ++t) {
    float f = scale;
    if (norm) {
      float den = Dot(phq + t * dp, z0, dp);
      for (int64_t tau = 0; tau <= t; ++tau) den += g[t * n + tau];
      if (den > 0.0f) {
        f = scale / den;
        w.inv_den[t] = 1.0f / den;
      }
    }
    for (int64_t j = 0; j < dv; ++j) dyf[t * dv + j] = f * dy[t * y_width + j];
  }
  if (norm) {
    float* num = w.num.data();
    Gemm(false, false, n, dv, dp, 1.0f, phq, dp, s0, dv, 0.0f, num, dv);
    Gemm(false, false, n, dv, n, 1.0f, g, n, u, dv, 1.0f, num, dv);
    for (int64_t t = 0; t < n; ++t) w.dd[t] = -w.inv_den[t] * Dot(dyf + t * dv, num + t * dv, dv);
  }
  // dU = Gᵀ dY + Φk dS;  D = tril(dY Uᵀ) (+ dd);  dΦq = dY S₀ᵀ (+ dd z₀) + D Φk;
  // dΦk = U dSᵀ (+ dz) + Dᵀ Φq;  dS += Φqᵀ dY;  dz += Σ dd φq.
  Gemm(true, false, n, dv, n, 1.0f, g, n, dyf, dv, 0.0f, du, dv);
  Gemm(false, false, n, dv, dp, 1.0f, phk, dp, ds, dv, 1.0f, du, dv);
  Gemm(false, true, n, n, dv, 1.0f, dyf, dv, u, dv, 0.0f, d, n);
  for (int64_t t = 0; t < n; ++t) {
    std::fill(d + t * n + t + 1, d + (t + 1) * n, 0.0f);
    if (norm) {
      for (int64_t tau = 0; tau <= t; ++tau) d[t * n + tau] += w.dd[t];
    }
  }
  float *dphq = w.dphq.data(), *dphk = w.dphk.data();
  Gemm(false, true, n, dp, dv, 1.0f, dyf, dv, s0, dv, 0.0f, dphq, dp);
  Gemm(false, false, n, dp, n, 1.0f, d, n, phk, dp, 1.0f, dphq, dp);
  Gemm(false, true, n, dp, dv, 1.0f, u, dv, ds, dv, 0.0f, dphk, dp);
  Gemm(true, false, n, dp, n, 1.0f, d, n, phq, dp, 1.0f, dphk, dp);
  if (norm) {
    for (int64_t t = 0; t < n; ++t) {
      AddScaled(dphq + t * dp, w.dd[t], z0, dp);
      AddScaled(dphk + t * dp, 1.0f, dz, dp);
    }
    for (int64_t t = 0; t < n; ++t) AddScaled(dz, w.dd[t], phq + t * dp, dp);
  }
  Gemm(true, false, dp, dv, n, 1.0f, phq, dp, dyf, dv, 1.0f, ds, dv);

  if (delta) {
    // dR = (I + diag(β) K)⁻ᵀ dU, in place; then dV = β dR, dP = −β dR (into
    // dY's rows), dL = −strictly-tril(dR Uᵀ), dβ, dK = diag(β) dL.
    for (int64_t t = n - 1; t >= 0; --t) {
      float* dr = du + t * dv;
      for (int64_t k = t + 1; k < n; ++k) AddScaled(dr, -beta[k] * kk[k * n + t], du + k * dv, dv);
    }
    Gemm(false, true, n, n, dv, -1.0f, du, dv, u, dv, 0.0f, d, n);
    for (int64_t t = 0; t < n; ++t) {
      const float b = beta[t];
      float* drow = drows + t * row_width;
      float dbeta = Dot(du + t * dv, &w.vmp[t * dv], dv);
      for (int64_t k = 0; k < t; ++k) dbeta += d[t * n + k] * kk[t * n + k];
      drow[2 * dk + dv] = dbeta * b * (1.0f - b);
      for (int64_t k = 0; k < n; ++k) d[t * n + k] = k < t ? b * d[t * n + k] : 0.0f;
      for (int64_t j = 0; j < dv; ++j) {
        drow[2 * dk + j] = b * du[t * dv + j];
        dyf[t * dv + j] = -b * du[t * dv + j];
      }
    }
    Gemm(false, true, n, dp, dv, 1.0f, dyf, dv, s0, dv, 1.0f, dphk, dp);
    Gemm(false, false, n, dp, n, 1.0f, d, n, phk, dp, 1.0f, dphk, dp);
    Gemm(true, false, n, dp, n, 1.0f, d, n, phk, dp, 1.0f, dphk, dp);
    Gemm(true, false, dp, dv, n, 1.0f, phk, dp, dyf, dv, 1.0f, ds, dv);
  } else {
    for (int64_t t = 0; t < n; ++t) std::copy(du + t * dv, du + (t + 1) * dv, drows + t * row_width + 2 * dk);
  }
  for (int64_t t = 0; t < n; ++t) {
    const float* row = rows + t * row_width;
    float* drow = drows + t * row_width;
    FeatureMapRowBackward(spec.phi, row, dk, favor_proj, dphq + t * dp, drow);
    FeatureMapRowBackward(spec.phi, row + dk, dk, favor_proj, dphk + t * dp, drow + dk);
  }
}

}  // namespace

void FastWeightSequenceBackward(const FastWeightSpec& spec, const float* qkvb,
                                const float* favor_proj, const int32_t* slots,
                                int64_t batch, int64_t time, const StateView& state,
                                const float* dy, float* dqkvb, const StateView& dstate,
                                int64_t chunk) {
  if (time <= 0 || batch <= 0) return;  // ∂L/∂(S₀, z₀) is ∂L/∂(S_T, z_T): dstate as it is
  const int64_t dv = spec.DValue(), dp = spec.DPhi();
  const int64_t sz = dp * dv;
  const int64_t zf = spec.HasNormalizer() ? dp : 0;
  const int64_t row_width = spec.RowWidth(), y_width = spec.heads * dv;
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  const int64_t chunks = (time + chunk - 1) / chunk;

  CpuThreadPool().ParallelFor(batch * spec.heads, [&](int64_t task) {
    const int64_t b = task / spec.heads, h = task % spec.heads;
    const int64_t slot = slots[b];
    const float* s0 = state.base + slot * state.slot_floats + state.s_offset + h * sz;
    const float* z0 = zf ? state.base + slot * state.slot_floats + state.z_offset + h * dp
                         : nullptr;
    const float* rows = qkvb + b * time * row_width + h * spec.HeadWidth();
    auto row_of = [&](int64_t t) { return rows + t * row_width; };

    // Checkpoints of (S, z) at every chunk start, by the chunkwise form.
    thread_local std::vector<float> checkpoints, states, y_scratch;
    thread_local std::vector<TokenValues> tvs;
    thread_local ChunkScratch scratch;
    thread_local BackwardState g;
    thread_local ChunkBackwardScratch chunk_scratch;
    checkpoints.resize(chunks * (sz + zf));
    scratch.Resize(chunk, dp, dv);
    y_scratch.resize(chunk * dv);
    float* cp = checkpoints.data();
    std::copy(s0, s0 + sz, cp);
    if (zf) std::copy(z0, z0 + dp, cp + sz);
    for (int64_t c = 0; c + 1 < chunks; ++c) {  // the last chunk's end state is not needed
      float* next = cp + (c + 1) * (sz + zf);
      std::copy(cp + c * (sz + zf), next, next);
      SequenceChunk(spec, row_of(c * chunk), row_width, favor_proj, chunk, next,
                    zf ? next + sz : nullptr, y_scratch.data(), dv, scratch);
    }

    // ∂L/∂S_T, ∂L/∂z_T from the caller (or zero).
    g.ds.assign(sz, 0.0f);
    g.dz.assign(zf, 0.0f);
    float* ds_out = dstate.base ? dstate.base + slot * dstate.slot_floats + dstate.s_offset + h * sz
                                : nullptr;
    float* dz_out = dstate.base && zf
                        ? dstate.base + slot * dstate.slot_floats + dstate.z_offset + h * dp
                        : nullptr;
    if (ds_out) std::copy(ds_out, ds_out + sz, g.ds.begin());
    if (dz_out) std::copy(dz_out, dz_out + dp, g.dz.begin());
    for (auto* v : {&g.dn, &g.du, &g.dvbar, &g.numer}) v->resize(dv);
    g.dphi_q.resize(dp);
    g.dphi_k.resize(dp);
    if (static_cast<int64_t>(tvs.size()) < chunk) tvs.resize(chunk);

    for (int64_t c = chunks - 1; c >= 0; --c) {
      const int64_t t0 = c * chunk, t1 = std::min(time, (c + 1) * chunk);
      if (chunk > 1) {  // the chunkwise form
        const float* start = cp + c * (sz + zf);
        ChunkBackward(spec, row_of(t0), row_width, favor_proj, t1 - t0, start,
                      zf ? start + sz : nullptr, dy + (b * time + t0) * y_width + h * dv, y_width,
                      g.ds.data(), g.dz.data(), dqkvb + (b * time + t0) * row_width + h * spec.HeadWidth(),
                      chunk_scratch);
        continue;
      }
      // Chunks of one token: the recurrence. states[i] is (S, z) after
      // token t0 + i, tvs[i] that token's values; the state before the chunk
      // is its checkpoint.
      states.resize((t1 - t0) * (sz + zf));
      auto before = [&](int64_t t) {
        return t > t0 ? &states[(t - t0 - 1) * (sz + zf)] : cp + c * (sz + zf);
      };
      for (int64_t t = t0; t < t1; ++t) {
        const float* prev = before(t);
        float* next = &states[(t - t0) * (sz + zf)];
        RecomputeToken(spec, row_of(t), favor_proj, prev, prev + sz, next,
                       zf ? next + sz : nullptr, tvs[t - t0]);
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const float* st = &states[(t - t0) * (sz + zf)];
        BackwardToken(spec, row_of(t), favor_proj, tvs[t - t0], st, st + sz, before(t),
                      dy + (b * time + t) * y_width + h * dv, g,
                      dqkvb + (b * time + t) * row_width + h * spec.HeadWidth());
      }
    }
    if (ds_out) std::copy(g.ds.begin(), g.ds.end(), ds_out);
    if (dz_out) std::copy(g.dz.begin(), g.dz.end(), dz_out);
  });
}

namespace {

// One token of one (slot, head): the decode step's work, compiled like the
// backward's (AVX2 + FMA where the CPU has it). scratch: 2·d_φ + 3·d_value.
FWP_VECTOR_CLONES
void StepHead(const FastWeightSpec& spec, const float* row, const float* favor_proj, float* s,
              float* z, float* yh, float* scratch) {
  const int64_t dk = spec.d_head, dv = spec.DValue(), dp = spec.DPhi();
  float* phi_q = scratch;
  float* phi_k = phi_q + dp;
  float* vbar = phi_k + dp;  // [d_value], then the update u in place
  float* out = vbar + dv;    // S₀ᵀφq
  float* v = out + dv;
  FeatureMapRow(spec.phi, row, dk, favor_proj, phi_q);
  FeatureMapRow(spec.phi, row + dk, dk, favor_proj, phi_k);
  std::copy(row + 2 * dk, row + 2 * dk + dv, v);
  // One read of S: what the memory holds for the key, and for the query.
  std::fill(vbar, vbar + 2 * dv, 0.0f);
  for (int64_t r = 0; r < dp; ++r) {
    const float* sr = s + r * dv;
    const float k = phi_k[r], q = phi_q[r];
    for (int64_t j = 0; j < dv; ++j) {
      vbar[j] += sr[j] * k;
      out[j] += sr[j] * q;
    }
  }
  float* u = vbar;
  if (spec.update == UpdateRule::kDelta) {
    const float beta = Sigmoid(row[2 * dk + dv]);
    for (int64_t j = 0; j < dv; ++j) u[j] = beta * (v[j] - vbar[j]);
  } else {
    std::copy(v, v + dv, u);
  }
  // One read-modify-write of S: S += φk ⊗ u.
  float kq = 0.0f;
  for (int64_t r = 0; r < dp; ++r) {
    float* sr = s + r * dv;
    const float k = phi_k[r];
    kq += k * phi_q[r];
    for (int64_t j = 0; j < dv; ++j) sr[j] += k * u[j];
  }
  // y = S_newᵀφq = S₀ᵀφq + (φk·φq) u.
  float factor = spec.Scale();
  if (z != nullptr) {
    float den = 0.0f;
    for (int64_t r = 0; r < dp; ++r) {
      z[r] += phi_k[r];
      den += z[r] * phi_q[r];
    }
    if (den > 0.0f) factor /= den;
  }
  for (int64_t j = 0; j < dv; ++j) yh[j] = (out[j] + kq * u[j]) * factor;
}

}  // namespace

void FastWeightStep(const FastWeightSpec& spec, const float* qkvb,
                    const float* favor_proj, const int32_t* slots, int64_t n,
                    const StateView& state, float* y) {
  const int64_t dv = spec.DValue(), dp = spec.DPhi();
  // (slot, head) pairs are independent; small batches run on the caller.
  auto one = [&](int64_t task) {
    const int64_t i = task / spec.heads, h = task % spec.heads;
    thread_local std::vector<float> scratch;
    scratch.resize(2 * dp + 3 * dv);
    float* slot = state.base + static_cast<int64_t>(slots[i]) * state.slot_floats;
    float* z = spec.HasNormalizer() ? slot + state.z_offset + h * dp : nullptr;
    StepHead(spec, qkvb + i * spec.RowWidth() + h * spec.HeadWidth(), favor_proj,
             slot + state.s_offset + h * dp * dv, z, y + i * spec.heads * dv + h * dv,
             scratch.data());
  };
  const int64_t tasks = n * spec.heads;
  if (tasks * dp * dv < (int64_t{1} << 16)) {
    for (int64_t t = 0; t < tasks; ++t) one(t);
  } else {
    CpuThreadPool().ParallelFor(tasks, one);
  }
}

}  // namespace fwp::cpu
