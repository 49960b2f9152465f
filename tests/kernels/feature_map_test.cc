#include "kernels/feature_map.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "tests/reference.h"

namespace fwp {
namespace {

using testing::FeatureMap64;
using testing::RandomVector;
using testing::RelativeError;

TEST(FeatureMap, DpfpHasDimension2DNuAndMatchesAHandComputedExample) {
  FeatureMapSpec spec;
  spec.kind = FeatureMapKind::kDpfp;
  spec.sum_norm = false;
  for (int nu : {1, 2, 3}) {
    spec.nu = nu;
    EXPECT_EQ(spec.OutputDim(5), 2 * 5 * nu);
  }
  // x = [1, −2]: r = [relu(x), relu(−x)] = [1, 0, 0, 2].
  // ν = 1: roll(r, 1) = [2, 1, 0, 0]       → r ⊙ roll = [2, 0, 0, 0]
  // ν = 2: roll(r, 2) = [0, 2, 1, 0]       → r ⊙ roll = [0, 0, 0, 0]
  const float x[2] = {1.0f, -2.0f};
  spec.nu = 2;
  std::vector<float> phi(8);
  FeatureMapRow(spec, x, 2, nullptr, phi.data());
  EXPECT_EQ(phi, (std::vector<float>{2, 0, 0, 0, 0, 0, 0, 0}));
  // x = [3, 1, −2]: r = [3, 1, 0, 0, 0, 2]; roll(r, 1) = [2, 3, 1, 0, 0, 0].
  const float x3[3] = {3.0f, 1.0f, -2.0f};
  spec.nu = 1;
  phi.assign(6, 0.0f);
  FeatureMapRow(spec, x3, 3, nullptr, phi.data());
  EXPECT_EQ(phi, (std::vector<float>{6, 3, 0, 0, 0, 0}));
  // With sum normalisation the features sum to one.
  spec.sum_norm = true;
  FeatureMapRow(spec, x3, 3, nullptr, phi.data());
  EXPECT_EQ(phi, (std::vector<float>{6.0f / 9, 3.0f / 9, 0, 0, 0, 0}));
}

TEST(FeatureMap, EveryMapMatchesFloat64OnRandomStridedRows) {
  const int64_t rows = 37, d = 24, stride = 3 * d + 1;
  for (FeatureMapKind kind : testing::kAllFeatureMapKinds) {
    for (bool sum_norm : {false, true}) {
      if (sum_norm && kind == FeatureMapKind::kIdentity) continue;
      for (int nu : {1, 3}) {
        if (nu > 1 && kind != FeatureMapKind::kDpfp) continue;
        FeatureMapSpec spec{kind, nu, 40, sum_norm};
        SCOPED_TRACE(absl::StrCat(FeatureMapName(kind), " nu ", nu, " sum_norm ", sum_norm));
        Rng rng(11 + nu);
        const auto x = RandomVector(rows * stride, rng, 0.7);
        const auto omega = RandomVector(40 * d, rng, 0.3);
        const int64_t dp = spec.OutputDim(d);
        std::vector<float> phi(rows * dp, std::numeric_limits<float>::quiet_NaN());
        cpu::FeatureMap(spec, x.data() + d, rows, d, stride, omega.data(), phi.data());
        std::vector<double> ref;
        for (int64_t r = 0; r < rows; ++r) {
          auto row = FeatureMap64(spec, x.data() + d + r * stride, d, omega.data());
          ASSERT_EQ(static_cast<int64_t>(row.size()), dp);
          ref.insert(ref.end(), row.begin(), row.end());
        }
        EXPECT_LT(RelativeError(phi, ref), 1e-5);
      }
    }
  }
}

// Favor's e^{±ω·x − ‖x‖²/2} overflows float for an x along a row of Ω at
// d = 256 (e^128), and underflows to a row of zeros for a long x; normalised,
// the features are still the float64 ones.
TEST(FeatureMap, FavorUnderSumNormalisationStaysExactForLargeInputs) {
  for (const int64_t d : {64, 256}) {
    const int64_t m = 32;
    FeatureMapSpec spec{FeatureMapKind::kFavor, 1, static_cast<int32_t>(m), true};
    Rng rng(5 + d);
    const auto omega = RandomVector(m * d, rng, 2.0);  // ‖ω_f‖² ≈ 4d/3
    std::vector<float> x(omega.begin(), omega.begin() + d);  // along ω₀: e^{‖ω₀‖²/2}
    const auto scattered = RandomVector(d, rng, 30.0 / std::sqrt(static_cast<double>(d)));
    x.insert(x.end(), scattered.begin(), scattered.end());  // ‖x‖ ≈ 30: e^{−450 ± ω·x}
    for (int64_t r = 0; r < 2; ++r) {
      SCOPED_TRACE(absl::StrCat("d ", d, " row ", r));
      std::vector<float> phi(2 * m, std::numeric_limits<float>::quiet_NaN());
      FeatureMapRow(spec, x.data() + r * d, d, omega.data(), phi.data());
      const auto ref = FeatureMap64(spec, x.data() + r * d, d, omega.data());
      for (float v : phi) ASSERT_TRUE(std::isfinite(v));
      EXPECT_LT(RelativeError(phi, ref), 1e-5);
    }
  }
}

TEST(FeatureMap, SumNormalisationOfAllZeroFeaturesStaysZero) {
  FeatureMapSpec spec{FeatureMapKind::kRelu, 1, 0, true};
  const float x[3] = {-1.0f, -2.0f, -0.5f};
  float phi[3] = {7, 7, 7};
  FeatureMapRow(spec, x, 3, nullptr, phi);
  EXPECT_EQ(phi[0] + phi[1] + phi[2], 0.0f);
}

}  // namespace
}  // namespace fwp
