#include "kernels/feature_map.h"

#include <cmath>

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

int64_t FeatureMapSpec::OutputDim(int64_t d) const {
  switch (kind) {
    case FeatureMapKind::kDpfp: return 2 * d * nu;
    case FeatureMapKind::kFavor: return 2 * static_cast<int64_t>(favor_features);
    default: return d;
  }
}

void FeatureMapRow(const FeatureMapSpec& spec, const float* x, int64_t d,
                   const float* favor_proj, float* phi) {
  const int64_t d_phi = spec.OutputDim(d);
  switch (spec.kind) {
    case FeatureMapKind::kDpfp: {
      const int64_t two_d = 2 * d;
      auto r = [&](int64_t i) {
        float v = i < d ? x[i] : -x[i - d];
        return v > 0.0f ? v : 0.0f;
      };
      for (int64_t j = 1; j <= spec.nu; ++j) {
        float* out = phi + (j - 1) * two_d;
        for (int64_t i = 0; i < two_d; ++i) {
          out[i] = r(i) * r(((i - j) % two_d + two_d) % two_d);
        }
      }
      break;
    }
    case FeatureMapKind::kElu1:
      for (int64_t i = 0; i < d; ++i) {
        phi[i] = x[i] > 0.0f ? x[i] + 1.0f : std::exp(x[i]);
      }
      break;
    case FeatureMapKind::kFavor: {
      const int64_t m = spec.favor_features;
      float half_sq = 0.0f;
      for (int64_t i = 0; i < d; ++i) half_sq += x[i] * x[i];
      half_sq *= 0.5f;
      const float scale = 1.0f / std::sqrt(static_cast<float>(2 * m));
      for (int64_t f = 0; f < m; ++f) {
        const float* w = favor_proj + f * d;
        float dot = 0.0f;
        for (int64_t i = 0; i < d; ++i) dot += w[i] * x[i];
        phi[f] = std::exp(dot - half_sq) * scale;
        phi[m + f] = std::exp(-dot - half_sq) * scale;
      }
      break;
    }
    case FeatureMapKind::kRelu:
      for (int64_t i = 0; i < d; ++i) phi[i] = x[i] > 0.0f ? x[i] : 0.0f;
      break;
    case FeatureMapKind::kIdentity:
      for (int64_t i = 0; i < d; ++i) phi[i] = x[i];
      break;
  }
  if (spec.sum_norm) {
    float sum = 0.0f;
    for (int64_t i = 0; i < d_phi; ++i) sum += phi[i];
    if (sum > 0.0f) {
      const float inv = 1.0f / sum;
      for (int64_t i = 0; i < d_phi; ++i) phi[i] *= inv;
    }
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

}  // namespace fwp::cpu
