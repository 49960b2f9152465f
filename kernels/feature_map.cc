#include "kernels/feature_map.h"

#include "kernels/shared_math.h"

#include <cmath>
#include <optional>
#include <string_view>
#include <vector>

namespace fwp {

const char* FeatureMapName(FeatureMapKind kind) {
  switch (kind) {
    case FeatureMapKind::kDpfp: return "dpfp";
    case FeatureMapKind::kElu1: return "elu1";
    case FeatureMapKind::kFavor: return "favor";
    case FeatureMapKind::kRelu: return "relu";
    case FeatureMapKind::kIdentity: return "identity";
  }
  return "?";
}

std::optional<FeatureMapKind> FeatureMapFromName(std::string_view name) {
  for (FeatureMapKind kind : {FeatureMapKind::kDpfp, FeatureMapKind::kElu1, FeatureMapKind::kFavor,
                              FeatureMapKind::kRelu, FeatureMapKind::kIdentity}) {
    if (name == FeatureMapName(kind)) return kind;
  }
  return std::nullopt;
}

int64_t FeatureMapSpec::OutputDim(int64_t d) const {
  switch (kind) {
    case FeatureMapKind::kDpfp: return 2 * d * nu;
    case FeatureMapKind::kFavor: return 2 * static_cast<int64_t>(favor_features);
    default: return d;
  }
}

namespace {

// φ(x) before spec.sum_norm's normalisation. With it on, favor's features
// are taken without the factors that normalisation cancels (e^{−‖x‖²/2}/√(2m)
// and e^{−max_f |ω_f·x|}): a softmax over ±ω_f·x, which neither overflows to
// inf (NaN once normalised) nor underflows to a row of zeros for a large x.
void RawFeatureRow(const FeatureMapSpec& spec, const float* x, int64_t d,
                   const float* favor_proj, float* phi) {
  switch (spec.kind) {
    case FeatureMapKind::kDpfp: {
      // r once, then each roll as two contiguous runs (no index arithmetic
      // per element): out_i = r_i · r_{(i − j) mod 2d}.
      const int64_t two_d = 2 * d;
      thread_local std::vector<float> r;
      r.resize(two_d);
      for (int64_t i = 0; i < two_d; ++i) r[i] = math::DpfpR(x, d, i);
      for (int64_t j = 1; j <= spec.nu; ++j) {
        float* out = phi + (j - 1) * two_d;
        const int64_t shift = j % two_d;
        for (int64_t i = 0; i < shift; ++i) out[i] = r[i] * r[i - shift + two_d];
        for (int64_t i = shift; i < two_d; ++i) out[i] = r[i] * r[i - shift];
      }
      break;
    }
    case FeatureMapKind::kElu1:
      for (int64_t i = 0; i < d; ++i) phi[i] = math::Elu1(x[i]);
      break;
    case FeatureMapKind::kFavor: {
      const int64_t m = spec.favor_features;
      auto dot_of = [&](int64_t f) {
        const float* w = favor_proj + f * d;
        float dot = 0.0f;
        for (int64_t i = 0; i < d; ++i) dot += w[i] * x[i];
        return dot;
      };
      if (spec.sum_norm) {
        float top = 0.0f;
        for (int64_t f = 0; f < m; ++f) {
          const float dot = dot_of(f);
          phi[f] = dot;
          phi[m + f] = -dot;
          top = std::fmax(top, std::fabs(dot));
        }
        for (int64_t i = 0; i < 2 * m; ++i) phi[i] = std::exp(phi[i] - top);
        break;
      }
      float half_sq = 0.0f;
      for (int64_t i = 0; i < d; ++i) half_sq += x[i] * x[i];
      half_sq *= 0.5f;
      const float scale = 1.0f / std::sqrt(static_cast<float>(2 * m));
      for (int64_t f = 0; f < m; ++f) {
        const float dot = dot_of(f);
        phi[f] = std::exp(dot - half_sq) * scale;
        phi[m + f] = std::exp(-dot - half_sq) * scale;
      }
      break;
    }
    case FeatureMapKind::kRelu:
      for (int64_t i = 0; i < d; ++i) phi[i] = math::Relu(x[i]);
      break;
    case FeatureMapKind::kIdentity:
      for (int64_t i = 0; i < d; ++i) phi[i] = x[i];
      break;
  }
}

}  // namespace

void FeatureMapRow(const FeatureMapSpec& spec, const float* x, int64_t d,
                   const float* favor_proj, float* phi) {
  const int64_t d_phi = spec.OutputDim(d);
  RawFeatureRow(spec, x, d, favor_proj, phi);
  if (spec.sum_norm) {
    float sum = 0.0f;
    for (int64_t i = 0; i < d_phi; ++i) sum += phi[i];
    if (sum > 0.0f) {
      const float inv = 1.0f / sum;
      for (int64_t i = 0; i < d_phi; ++i) phi[i] *= inv;
    }
  }
}

void FeatureMapRowBackward(const FeatureMapSpec& spec, const float* x, int64_t d,
                           const float* favor_proj, const float* dphi, float* dx) {
  const int64_t d_phi = spec.OutputDim(d);
  thread_local std::vector<float> g, dg, r, dr;
  g.resize(d_phi);
  dg.assign(dphi, dphi + d_phi);
  if (spec.sum_norm) {
    // φ = g / Σg  ⇒  ∂L/∂g_i = (∂L/∂φ_i − Σ_j ∂L/∂φ_j φ_j) / Σg (any g
    // whose normalisation is φ: favor's is scaled by a constant of the row,
    // under which the products dg·g below do not change).
    RawFeatureRow(spec, x, d, favor_proj, g.data());
    float sum = 0.0f;
    for (int64_t i = 0; i < d_phi; ++i) sum += g[i];
    if (sum > 0.0f) {
      const float inv = 1.0f / sum;
      float dot = 0.0f;
      for (int64_t i = 0; i < d_phi; ++i) dot += dphi[i] * g[i] * inv;
      for (int64_t i = 0; i < d_phi; ++i) dg[i] = (dphi[i] - dot) * inv;
    }
  }
  switch (spec.kind) {
    case FeatureMapKind::kDpfp: {
      const int64_t two_d = 2 * d;
      r.resize(two_d);
      dr.assign(two_d, 0.0f);
      for (int64_t i = 0; i < two_d; ++i) r[i] = math::DpfpR(x, d, i);
      for (int64_t j = 1; j <= spec.nu; ++j) {
        const float* dgj = dg.data() + (j - 1) * two_d;
        for (int64_t i = 0; i < two_d; ++i) {
          const int64_t src = math::RollSource(i, j, two_d);
          dr[i] += dgj[i] * r[src];
          dr[src] += dgj[i] * r[i];
        }
      }
      for (int64_t i = 0; i < d; ++i) {
        dx[i] = (x[i] > 0.0f ? dr[i] : 0.0f) - (x[i] < 0.0f ? dr[d + i] : 0.0f);
      }
      break;
    }
    case FeatureMapKind::kElu1:
      for (int64_t i = 0; i < d; ++i) dx[i] = dg[i] * math::Elu1Grad(x[i]);
      break;
    case FeatureMapKind::kFavor: {
      // g_f = e^{ω_f·x − ‖x‖²/2}/√(2m), g_{m+f} = e^{−ω_f·x − ‖x‖²/2}/√(2m):
      // ∂g_f/∂x = g_f (ω_f − x), ∂g_{m+f}/∂x = g_{m+f} (−ω_f − x).
      const int64_t m = spec.favor_features;
      if (!spec.sum_norm) RawFeatureRow(spec, x, d, favor_proj, g.data());  // (else above)
      float along_x = 0.0f;  // Σ_f dg_f g_f + dg_{m+f} g_{m+f}
      for (int64_t i = 0; i < d; ++i) dx[i] = 0.0f;
      for (int64_t f = 0; f < m; ++f) {
        const float plus = dg[f] * g[f], minus = dg[m + f] * g[m + f];
        along_x += plus + minus;
        const float* w = favor_proj + f * d;
        for (int64_t i = 0; i < d; ++i) dx[i] += (plus - minus) * w[i];
      }
      for (int64_t i = 0; i < d; ++i) dx[i] -= along_x * x[i];
      break;
    }
    case FeatureMapKind::kRelu:
      for (int64_t i = 0; i < d; ++i) dx[i] = x[i] > 0.0f ? dg[i] : 0.0f;
      break;
    case FeatureMapKind::kIdentity:
      for (int64_t i = 0; i < d; ++i) dx[i] = dg[i];
      break;
  }
}

}  // namespace fwp

namespace fwp::cpu {

void FeatureMap(const FeatureMapSpec& spec, const float* x, int64_t rows,
                int64_t d, int64_t x_stride, const float* favor_proj,
                float* phi) {
  const int64_t d_phi = spec.OutputDim(d);
  for (int64_t r = 0; r < rows; ++r) {
    FeatureMapRow(spec, x + r * x_stride, d, favor_proj, phi + r * d_phi);
  }
}

void FeatureMapBackward(const FeatureMapSpec& spec, const float* x, int64_t rows,
                        int64_t d, int64_t x_stride, const float* favor_proj,
                        const float* dphi, float* dx, int64_t dx_stride) {
  const int64_t d_phi = spec.OutputDim(d);
  for (int64_t r = 0; r < rows; ++r) {
    FeatureMapRowBackward(spec, x + r * x_stride, d, favor_proj, dphi + r * d_phi,
                          dx + r * dx_stride);
  }
}

}  // namespace fwp::cpu
