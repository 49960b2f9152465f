// Feature maps φ of the fast-weight memory, each with optional sum
// normalisation φ(x)/Σφ(x) (Schlag et al. 2021, section 4.2 and 5.2).
//
//   dpfp (ν)  r = [relu(x), relu(−x)] ∈ R^{2d};
//             φ(x) = concat_{j=1..ν} r ⊙ roll(r, j), roll(r, j)_i = r_{(i−j) mod 2d}
//             (torch.roll semantics);                              d_φ = 2·d·ν
//   elu1      φ(x) = elu(x) + 1 (Katharopoulos et al.);             d_φ = d
//   favor (m) φ(x) = [exp(Ωx − ‖x‖²/2), exp(−Ωx − ‖x‖²/2)] / √(2m), Ω [m, d]
//             orthogonal random rows drawn once from a seed;       d_φ = 2m
//   relu      φ(x) = relu(x);                                        d_φ = d
//   identity  φ(x) = x;                                              d_φ = d
//
// Sum normalisation divides by Σφ only when it is positive: every map that may
// be normalised is non-negative, so Σφ = 0 means φ = 0 and the division is
// skipped instead of producing 0/0. Identity features are signed and are never
// normalised (config validation refuses it).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace fwp {

enum class FeatureMapKind { kDpfp, kElu1, kFavor, kRelu, kIdentity };

const char* FeatureMapName(FeatureMapKind kind);
// The kind FeatureMapName gives `name`; nullopt for no kind.
std::optional<FeatureMapKind> FeatureMapFromName(std::string_view name);

struct FeatureMapSpec {
  FeatureMapKind kind = FeatureMapKind::kDpfp;
  int nu = 1;              // dpfp: number of rolls
  int favor_features = 0;  // favor: m random features
  bool sum_norm = true;

  // d_φ for inputs of dimension d.
  int64_t OutputDim(int64_t d) const;
  // Whether φ(x) ≥ 0 for all x (sum normalisation needs it).
  bool NonNegative() const { return kind != FeatureMapKind::kIdentity; }
};

// One row: x [d] → phi [spec.OutputDim(d)]. favor_proj: Ω [m, d] for favor,
// ignored otherwise. Shared by every CPU op that applies a feature map.
void FeatureMapRow(const FeatureMapSpec& spec, const float* x, int64_t d,
                   const float* favor_proj, float* phi);

// Backward of one row: given x and dphi = ∂L/∂φ, writes dx = ∂L/∂x (=, not +=).
// Ω is fixed (drawn once, not trained), so it gets no gradient.
void FeatureMapRowBackward(const FeatureMapSpec& spec, const float* x, int64_t d,
                           const float* favor_proj, const float* dphi, float* dx);

}  // namespace fwp

namespace fwp::cpu {

// rows of x, each d wide, `x_stride` floats apart (so q or k can be read in
// place from a fused projection) → phi [rows, OutputDim(d)].
void FeatureMap(const FeatureMapSpec& spec, const float* x, int64_t rows,
                int64_t d, int64_t x_stride, const float* favor_proj,
                float* phi);

// dphi: [rows, OutputDim(d)] → dx rows (d wide, `dx_stride` apart), written.
void FeatureMapBackward(const FeatureMapSpec& spec, const float* x, int64_t rows,
                        int64_t d, int64_t x_stride, const float* favor_proj,
                        const float* dphi, float* dx, int64_t dx_stride);

}  // namespace fwp::cpu
