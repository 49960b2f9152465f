// Backward of the fast-weight memory and of the feature maps against central
// finite differences of the float64 forward, for every variant.
#include <gtest/gtest.h>

#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/fast_weight.h"
#include "kernels/feature_map.h"
#include "tests/reference.h"

namespace fwp {
namespace {

using testing::FastWeightRecurrence64;
using testing::FeatureMap64;
using testing::NumericGradient;
using testing::RandomVector;
using testing::RelativeError;

TEST(FeatureMapBackward, MatchesFiniteDifferencesForEveryMap) {
  const int64_t rows = 5, d = 6;
  for (FeatureMapKind kind : testing::kAllFeatureMapKinds) {
    for (bool sum_norm : {false, true}) {
      if (sum_norm && kind == FeatureMapKind::kIdentity) continue;
      FeatureMapSpec spec{kind, 2, 7, sum_norm};
      SCOPED_TRACE(absl::StrCat(FeatureMapName(kind), " sum_norm ", sum_norm));
      Rng rng(21);
      const auto x = RandomVector(rows * d, rng, 0.8);
      const auto omega = RandomVector(7 * d, rng, 0.5);
      const int64_t dp = spec.OutputDim(d);
      const auto g = RandomVector(rows * dp, rng);  // L = Σ g·φ(x)
      std::vector<float> dx(rows * d, std::numeric_limits<float>::quiet_NaN());
      cpu::FeatureMapBackward(spec, x.data(), rows, d, d, omega.data(), g.data(), dx.data(), d);
      auto loss = [&](const std::vector<double>& xd) {
        double l = 0;
        for (int64_t r = 0; r < rows; ++r) {
          const auto phi = FeatureMap64(spec, xd.data() + r * d, d, omega.data());
          for (int64_t i = 0; i < dp; ++i) l += g[r * dp + i] * phi[i];
        }
        return l;
      };
      const auto numeric = NumericGradient(std::vector<double>(x.begin(), x.end()), loss);
      EXPECT_LT(RelativeError(dx, numeric), 1e-5);
    }
  }
}

// Chunk 1 runs the recurrence token by token; 4 and 13 the chunkwise form (with
// a partial last chunk, and as one chunk).
TEST(FastWeightSequenceBackward, MatchesFiniteDifferencesForEveryVariantAndChunk) {
  const int64_t heads = 2, d_head = 4, batch = 2, time = 13;
  const int32_t slots[] = {2, 0};
  auto variants = testing::AllAttentionVariants(heads, d_head);
  for (const auto& v : testing::UnequalValueVariants(heads, d_head, 6)) variants.push_back(v);
  for (const FastWeightSpec& spec : variants) {
    SCOPED_TRACE(absl::StrCat(UpdateRuleName(spec.update), "+", FeatureMapName(spec.phi.kind),
                              spec.attention_normalizer ? "+normaliser" : ""));
    Rng rng(8);
    const int64_t dp = spec.DPhi(), dv = spec.DValue(), sz = dp * dv;
    const int64_t zf = spec.HasNormalizer() ? dp : 0;
    const int64_t per_head = sz + zf;  // this test lays a slot out head by head
    const int64_t slot_floats = heads * per_head;
    StateView view{nullptr, slot_floats, 0, heads * sz};
    // S at [h·sz], z at [heads·sz + h·dp] within a slot (as the model does).
    auto initial = RandomVector(3 * slot_floats, rng, 0.2);
    for (int64_t slot = 0; slot < 3; ++slot) {
      for (int64_t i = heads * sz; i < slot_floats; ++i) {
        initial[slot * slot_floats + i] = std::abs(initial[slot * slot_floats + i]);
      }
    }
    const auto qkvb = RandomVector(batch * time * spec.RowWidth(), rng, 0.5);
    const auto omega = RandomVector(spec.phi.favor_features * d_head, rng, 0.5);
    const auto gy = RandomVector(batch * time * heads * dv, rng);
    const auto gs = RandomVector(3 * slot_floats, rng);  // ∂L/∂ final state

    // Analytic: dqkvb and ∂L/∂(S₀, z₀).
    auto analytic = [&](int64_t chunk) {
      std::vector<float> dqkvb(qkvb.size(), std::numeric_limits<float>::quiet_NaN());
      std::vector<float> dstate = gs;
      view.base = const_cast<float*>(initial.data());
      StateView dview = view;
      dview.base = dstate.data();
      cpu::FastWeightSequenceBackward(spec, qkvb.data(), omega.data(), slots, batch, time, view,
                                      gy.data(), dqkvb.data(), dview, chunk);
      return std::pair{dqkvb, dstate};
    };

    // L = Σ gy·y + Σ gs·(S_T, z_T), in float64 from (qkvb, initial).
    auto loss = [&](const std::vector<double>& q, const std::vector<double>& init) {
      double l = 0;
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < heads; ++h) {
          const double* base = init.data() + slots[b] * slot_floats;
          std::vector<double> s(base + h * sz, base + (h + 1) * sz);
          std::vector<double> z(zf ? base + heads * sz + h * dp : base,
                                zf ? base + heads * sz + (h + 1) * dp : base);
          std::vector<double> y;
          FastWeightRecurrence64(spec, q.data() + b * time * spec.RowWidth() + h * spec.HeadWidth(),
                                 spec.RowWidth(), time, omega.data(), s, z, y);
          for (int64_t t = 0; t < time; ++t) {
            for (int64_t j = 0; j < dv; ++j) {
              l += gy[(b * time + t) * heads * dv + h * dv + j] * y[t * dv + j];
            }
          }
          const float* gslot = gs.data() + slots[b] * slot_floats;
          for (int64_t i = 0; i < sz; ++i) l += gslot[h * sz + i] * s[i];
          for (int64_t i = 0; i < zf; ++i) l += gslot[heads * sz + h * dp + i] * z[i];
        }
      }
      return l;
    };
    const std::vector<double> q64(qkvb.begin(), qkvb.end());
    const std::vector<double> init64(initial.begin(), initial.end());
    const auto dq_numeric =
        NumericGradient(q64, [&](const std::vector<double>& q) { return loss(q, init64); });
    const auto ds_numeric =
        NumericGradient(init64, [&](const std::vector<double>& i) { return loss(q64, i); });
    // Only the slots in the batch carry gradient back; slot 1 keeps its input.
    std::vector<double> ds_expected = ds_numeric;
    for (int64_t i = 0; i < slot_floats; ++i) ds_expected[slot_floats + i] = gs[slot_floats + i];
    for (int64_t chunk : {1, 4, 13}) {
      SCOPED_TRACE(absl::StrCat("chunk ", chunk));
      const auto [dqkvb, dstate] = analytic(chunk);
      EXPECT_LT(RelativeError(dqkvb, dq_numeric), 1e-5) << "dqkvb";
      EXPECT_LT(RelativeError(dstate, ds_expected), 1e-5) << "dstate";
    }
  }
}

}  // namespace
}  // namespace fwp
