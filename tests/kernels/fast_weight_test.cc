// The fast-weight memory ops against the float64 recurrence, for every update
// rule × feature map, from non-zero initial states in a pool of slots.
#include "kernels/fast_weight.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "tests/reference.h"

namespace fwp {
namespace {

using testing::AllAttentionVariants;
using testing::FastWeightRecurrence64;
using testing::RandomVector;
using testing::RelativeError;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::string Name(const FastWeightSpec& s) {
  return absl::StrCat(UpdateRuleName(s.update), "+", FeatureMapName(s.phi.kind),
                      s.attention_normalizer ? "+normaliser" : "");
}

// A pool of `slots` states laid out as the model does: S for all heads, then z.
struct Pool {
  Pool(const FastWeightSpec& spec, int64_t slots, Rng& rng)
      : s_floats(spec.heads * spec.DPhi() * spec.DValue()),
        z_floats(spec.HasNormalizer() ? spec.heads * spec.DPhi() : 0),
        data(slots * (s_floats + z_floats)) {
    for (float& x : data) x = static_cast<float>(rng.Normal() * 0.1);
    if (z_floats) {  // z is a sum of non-negative features
      for (int64_t slot = 0; slot < slots; ++slot) {
        for (int64_t i = 0; i < z_floats; ++i) {
          float& z = data[slot * (s_floats + z_floats) + s_floats + i];
          z = std::abs(z);
        }
      }
    }
  }
  StateView View() {
    return StateView{data.data(), s_floats + z_floats, 0, s_floats};
  }
  std::vector<double> S(int64_t slot, int64_t head, const FastWeightSpec& spec) const {
    const int64_t n = spec.DPhi() * spec.DValue();
    const float* p = data.data() + slot * (s_floats + z_floats) + head * n;
    return std::vector<double>(p, p + n);
  }
  std::vector<double> Z(int64_t slot, int64_t head, const FastWeightSpec& spec) const {
    if (!z_floats) return {};
    const float* p = data.data() + slot * (s_floats + z_floats) + s_floats + head * spec.DPhi();
    return std::vector<double>(p, p + spec.DPhi());
  }
  int64_t s_floats, z_floats;
  std::vector<float> data;
};

TEST(FastWeightSequence, MatchesFloat64RecurrenceForEveryVariantAndChunk) {
  const int64_t heads = 2, d_head = 16, batch = 2, time = 300;
  const int32_t slots[] = {3, 1};
  auto variants = AllAttentionVariants(heads, d_head);
  for (const auto& v : testing::UnequalValueVariants(heads, d_head, 24)) variants.push_back(v);
  for (const FastWeightSpec& spec : variants) {
    for (int64_t chunk : {1, 5, 64, 300}) {
      SCOPED_TRACE(absl::StrCat(Name(spec), " chunk ", chunk));
      Rng rng(17 + chunk);
      Pool pool(spec, 4, rng);
      const std::vector<float> initial = pool.data;
      const auto omega = RandomVector(spec.phi.favor_features * d_head, rng, 0.5);
      const auto qkvb = RandomVector(batch * time * spec.RowWidth(), rng, 0.3);
      const int64_t dv = spec.DValue();
      std::vector<float> y(batch * time * heads * dv, kNaN);
      cpu::FastWeightSequence(spec, qkvb.data(), omega.data(), slots, batch, time,
                              pool.View(), y.data(), chunk);
      // Reference, per (sequence, head), from the same initial states.
      Pool ref_pool = pool;
      ref_pool.data = initial;
      std::vector<double> y_ref(y.size());
      std::vector<double> s_out, s_ref;
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < heads; ++h) {
          auto s = ref_pool.S(slots[b], h, spec);
          auto z = ref_pool.Z(slots[b], h, spec);
          std::vector<double> yh;
          FastWeightRecurrence64(spec, qkvb.data() + b * time * spec.RowWidth() +
                                           h * spec.HeadWidth(),
                                 spec.RowWidth(), time, omega.data(), s, z, yh);
          for (int64_t t = 0; t < time; ++t) {
            for (int64_t j = 0; j < dv; ++j) {
              y_ref[(b * time + t) * heads * dv + h * dv + j] = yh[t * dv + j];
            }
          }
          const auto got = pool.S(slots[b], h, spec);
          s_out.insert(s_out.end(), got.begin(), got.end());
          s_ref.insert(s_ref.end(), s.begin(), s.end());
          const auto got_z = pool.Z(slots[b], h, spec);
          if (!z.empty()) {
            EXPECT_LT(RelativeError(got_z, z), 1e-5);
          }
        }
      }
      EXPECT_LT(RelativeError(y, y_ref), 1e-5);
      EXPECT_LT(RelativeError(s_out, s_ref), 1e-5);
      // Slots 0 and 2 are not in the batch: untouched to the bit.
      for (int64_t slot : {0, 2}) {
        const int64_t n = pool.s_floats + pool.z_floats;
        EXPECT_TRUE(std::equal(pool.data.begin() + slot * n, pool.data.begin() + (slot + 1) * n,
                               initial.begin() + slot * n));
      }
    }
  }
}

TEST(FastWeightStep, ManyRandomStepsOverSlotsInRandomOrderMatchFloat64) {
  const int64_t heads = 2, d_head = 8, num_slots = 64, steps = 120;
  auto variants = AllAttentionVariants(heads, d_head);
  for (const auto& v : testing::UnequalValueVariants(heads, d_head, 5)) variants.push_back(v);
  for (const FastWeightSpec& spec : variants) {
    SCOPED_TRACE(Name(spec));
    Rng rng(5);
    Pool pool(spec, num_slots, rng);
    const auto omega = RandomVector(spec.phi.favor_features * d_head, rng, 0.5);
    // The float64 twin of every slot's state.
    std::vector<std::vector<double>> s_ref(num_slots * heads), z_ref(num_slots * heads);
    for (int64_t slot = 0; slot < num_slots; ++slot) {
      for (int64_t h = 0; h < heads; ++h) {
        s_ref[slot * heads + h] = pool.S(slot, h, spec);
        z_ref[slot * heads + h] = pool.Z(slot, h, spec);
      }
    }
    std::vector<int32_t> order(num_slots);
    std::iota(order.begin(), order.end(), 0);
    std::vector<double> y_all, y_all_ref;
    for (int64_t step = 0; step < steps; ++step) {
      // A random subset of the slots, in random order.
      for (int64_t i = num_slots - 1; i > 0; --i) {
        std::swap(order[i], order[rng.Next() % (i + 1)]);
      }
      const int64_t n = 1 + rng.Next() % num_slots;
      std::vector<float> before = pool.data;
      const auto qkvb = RandomVector(n * spec.RowWidth(), rng, 0.3);
      const int64_t dv = spec.DValue();
      std::vector<float> y(n * heads * dv, kNaN);
      cpu::FastWeightStep(spec, qkvb.data(), omega.data(), order.data(), n, pool.View(),
                          y.data());
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t h = 0; h < heads; ++h) {
          std::vector<double> yh;
          FastWeightRecurrence64(spec, qkvb.data() + i * spec.RowWidth() + h * spec.HeadWidth(),
                                 spec.RowWidth(), 1, omega.data(), s_ref[order[i] * heads + h],
                                 z_ref[order[i] * heads + h], yh);
          y_all_ref.insert(y_all_ref.end(), yh.begin(), yh.end());
          y_all.insert(y_all.end(), y.begin() + (i * heads + h) * dv,
                       y.begin() + (i * heads + h + 1) * dv);
        }
      }
      const int64_t floats = pool.s_floats + pool.z_floats;
      for (int64_t i = n; i < num_slots; ++i) {  // slots not stepped
        const int64_t slot = order[i];
        ASSERT_TRUE(std::equal(pool.data.begin() + slot * floats,
                               pool.data.begin() + (slot + 1) * floats,
                               before.begin() + slot * floats))
            << "slot " << slot << " was not stepped but changed";
      }
    }
    EXPECT_LT(RelativeError(y_all, y_all_ref), 1e-5);
    std::vector<double> s_all, s_all_ref;
    for (int64_t slot = 0; slot < num_slots; ++slot) {
      for (int64_t h = 0; h < heads; ++h) {
        auto s = pool.S(slot, h, spec);
        s_all.insert(s_all.end(), s.begin(), s.end());
        s_all_ref.insert(s_all_ref.end(), s_ref[slot * heads + h].begin(),
                         s_ref[slot * heads + h].end());
      }
    }
    EXPECT_LT(RelativeError(s_all, s_all_ref), 1e-5);
  }
}

// Writes (k, v1), then (k, v2), then reads k.
std::vector<float> WriteTwiceThenRead(UpdateRule rule) {
  FastWeightSpec spec;
  spec.update = rule;
  spec.heads = 1;
  spec.d_head = 4;
  spec.phi.kind = FeatureMapKind::kIdentity;
  spec.phi.sum_norm = false;
  const float k[4] = {0, 1, 0, 0};  // a unit key: ‖φ(k)‖ = 1
  const float v1[4] = {1, -2, 3, 0.5f}, v2[4] = {-4, 0.25f, 2, 7};
  std::vector<float> state(16, 0.0f);
  StateView view{state.data(), 16, 0, 0};
  const int32_t slot = 0;
  std::vector<float> y(4);
  for (const float* v : {v1, v2}) {
    std::vector<float> row;
    row.insert(row.end(), k, k + 4);  // q = k: read back what k holds
    row.insert(row.end(), k, k + 4);
    row.insert(row.end(), v, v + 4);
    if (rule == UpdateRule::kDelta) row.push_back(40.0f);  // β = sigmoid(40) = 1
    cpu::FastWeightStep(spec, row.data(), nullptr, &slot, 1, view, y.data());
  }
  for (float& x : y) x *= 2.0f;  // undo 1/sqrt(d_head)
  return y;
}

TEST(FastWeightStep, DeltaRuleReplacesTheValueOfAKey) {
  EXPECT_EQ(WriteTwiceThenRead(UpdateRule::kDelta), (std::vector<float>{-4, 0.25f, 2, 7}));
}

TEST(FastWeightStep, SumRuleAddsTheValuesOfAKey) {
  EXPECT_EQ(WriteTwiceThenRead(UpdateRule::kSum), (std::vector<float>{-3, -1.75f, 5, 7.5f}));
}

}  // namespace
}  // namespace fwp
