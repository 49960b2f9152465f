// Every CUDA op against the CPU backend on fresh random inputs, with outputs
// poisoned (NaN) before the run so that an element the kernel never writes
// fails the comparison. Skips, saying why, where no GPU can be used.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cross_entropy.h"
#include "model/model.h"
#include "tests/reference.h"
#include "tests/sized_config.h"

namespace fwp {
namespace {

using testing::RandomVector;
using testing::RelativeError;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    auto gpu = MakeCudaBackend(0);
    if (!gpu.ok()) GTEST_SKIP() << "no CUDA backend: " << gpu.status().message();
    gpu_ = std::move(*gpu);
    cpu_ = MakeCpuBackend();
  }

  // A device copy of host data; lives as long as the fixture.
  template <typename T>
  T* Up(const std::vector<T>& host) {
    auto buffer = Buffer::Allocate(*gpu_, std::max<size_t>(host.size(), 1) * sizeof(T));
    EXPECT_TRUE(buffer.ok());
    gpu_->CopyToDevice(buffer->data(), host.data(), host.size() * sizeof(T));
    T* p = static_cast<T*>(buffer->data());
    buffers_.push_back(std::move(*buffer));
    return p;
  }
  template <typename T>
  std::vector<T> Down(const T* device, size_t n) {
    std::vector<T> host(n);
    gpu_->CopyToHost(host.data(), device, n * sizeof(T));
    return host;
  }
  float* Poisoned(size_t n) { return Up(std::vector<float>(n, kNaN)); }

  // FastWeightSequence and its backward on the GPU against the CPU: outputs,
  // final states, untouched slots, ∂qkvb and ∂(S₀, z₀).
  void CheckSequence(const FastWeightSpec& spec, int64_t batch, int64_t time);

  std::unique_ptr<Backend> gpu_, cpu_;
  std::vector<Buffer> buffers_;
};

TEST_F(CudaOps, Matmul) {
  Rng rng(1);
  for (auto [m, n, k] : {std::tuple{1, 7, 5}, {33, 65, 129}, {256, 512, 256}}) {
    const auto a = RandomVector(m * k, rng), b = RandomVector(n * k, rng);
    const auto bias = RandomVector(n, rng), c0 = RandomVector(m * n, rng);
    for (bool accumulate : {false, true}) {
      std::vector<float> want = c0;
      cpu_->Matmul(a.data(), b.data(), bias.data(), want.data(), m, n, k, accumulate);
      float* c = accumulate ? Up(c0) : Poisoned(m * n);
      gpu_->Matmul(Up(a), Up(b), Up(bias), c, m, n, k, accumulate);
      EXPECT_LT(RelativeError(Down(c, m * n), want), 1e-5) << m << "x" << n << "x" << k;
    }
  }
}

TEST_F(CudaOps, MatmulIsBatchInvariantAndCublasAgrees) {
  Rng rng(11);
  const int64_t n = 300, k = 257, rows = 130;
  const auto a = RandomVector(rows * k, rng), b = RandomVector(n * k, rng);
  const auto bias = RandomVector(n, rng);
  std::vector<float> want(rows * n);
  cpu_->Matmul(a.data(), b.data(), bias.data(), want.data(), rows, n, k, false);
  ASSERT_TRUE(gpu_->batch_invariant());  // the default: what serving needs
  float* da = Up(a);
  float* db = Up(b);
  float* dbias = Up(bias);
  float* all = Poisoned(rows * n);
  gpu_->Matmul(da, db, dbias, all, rows, n, k, false);
  const std::vector<float> full = Down(all, rows * n);
  EXPECT_LT(RelativeError(full, want), 1e-5);
  // Row 5's bits alone, among 7, and among all 130 rows.
  for (int64_t m : {1, 7, 64, 65}) {
    float* c = Poisoned(m * n);
    gpu_->Matmul(da + 5 * k, db, dbias, c, m, n, k, false);
    const std::vector<float> got = Down(c, m * n);
    EXPECT_EQ(0, std::memcmp(got.data(), full.data() + 5 * n, n * sizeof(float))) << "m=" << m;
  }
  gpu_->SetBatchInvariant(false);  // cuBLAS: the same product to float precision
  float* c = Poisoned(rows * n);
  gpu_->Matmul(da, db, dbias, c, rows, n, k, false);
  EXPECT_LT(RelativeError(Down(c, rows * n), want), 1e-5);
  gpu_->SetBatchInvariant(true);
}

TEST_F(CudaOps, MatmulBackward) {
  Rng rng(2);
  // dbias's column sums: one part of rows (37), then three, the last partial
  // (600); 50 columns, a tile of 32 and a tail.
  for (const int64_t m : {37, 600}) {
    SCOPED_TRACE(m);
    const int64_t n = 50, k = 64;
    const auto a = RandomVector(m * k, rng), b = RandomVector(n * k, rng),
               dc = RandomVector(m * n, rng);
    const auto db0 = RandomVector(n * k, rng), dbias0 = RandomVector(n, rng);
    std::vector<float> da(m * k), db = db0, dbias = dbias0;
    cpu_->MatmulBackward(dc.data(), a.data(), b.data(), da.data(), db.data(), dbias.data(), m, n,
                         k);
    float* gda = Poisoned(m * k);
    float* gdb = Up(db0);
    float* gdbias = Up(dbias0);
    gpu_->MatmulBackward(Up(dc), Up(a), Up(b), gda, gdb, gdbias, m, n, k);
    EXPECT_LT(RelativeError(Down(gda, m * k), da), 1e-5);
    EXPECT_LT(RelativeError(Down(gdb, n * k), db), 1e-5);
    EXPECT_LT(RelativeError(Down(gdbias, n), dbias), 1e-5);
  }
}

TEST_F(CudaOps, EmbeddingForwardAndBackward) {
  Rng rng(3);
  const int64_t vocab = 300, d = 64, n = 77;
  const auto table = RandomVector(vocab * d, rng);
  std::vector<int32_t> tokens(n);
  std::vector<int64_t> positions(n);
  for (int64_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<int32_t>(rng.Next() % vocab);
    positions[i] = static_cast<int64_t>(rng.Next() % 50000);
  }
  std::vector<float> want(n * d);
  cpu_->Embedding(tokens.data(), positions.data(), n, table.data(), d, want.data());
  float* out = Poisoned(n * d);
  gpu_->Embedding(Up(tokens), Up(positions), n, Up(table), d, out);
  EXPECT_LT(RelativeError(Down(out, n * d), want), 1e-6);

  const auto dout = RandomVector(n * d, rng);
  std::vector<float> dtable(vocab * d, 0.25f);
  cpu_->EmbeddingBackward(tokens.data(), n, dout.data(), d, dtable.data());
  float* gdtable = Up(std::vector<float>(vocab * d, 0.25f));
  gpu_->EmbeddingBackward(Up(tokens), n, Up(dout), d, gdtable);
  EXPECT_LT(RelativeError(Down(gdtable, vocab * d), dtable), 1e-6);
}

TEST_F(CudaOps, LayerNormForwardAndBackward) {
  Rng rng(4);
  // dgamma's and dbeta's column sums over one part of rows (45) and over
  // three, the last partial (700); 200 columns, the last tile partial.
  for (const int64_t rows : {45, 700}) {
    SCOPED_TRACE(rows);
    const int64_t d = 200;
    auto x = RandomVector(rows * d, rng, 3.0);
    const auto gamma = RandomVector(d, rng), beta = RandomVector(d, rng),
               dy = RandomVector(rows * d, rng);
    std::vector<float> want(rows * d);
    cpu_->LayerNorm(x.data(), gamma.data(), beta.data(), rows, d, 1e-5f, want.data());
    float* gx = Up(x);
    float* y = Poisoned(rows * d);
    gpu_->LayerNorm(gx, Up(gamma), Up(beta), rows, d, 1e-5f, y);
    EXPECT_LT(RelativeError(Down(y, rows * d), want), 1e-5);

    const auto dx0 = RandomVector(rows * d, rng);
    std::vector<float> dx = dx0, dgamma(d, 0.0f), dbeta(d, 0.0f);
    cpu_->LayerNormBackward(x.data(), gamma.data(), dy.data(), rows, d, 1e-5f, dx.data(),
                            dgamma.data(), dbeta.data());
    float* gdx = Up(dx0);
    float* gdgamma = Up(std::vector<float>(d, 0.0f));
    float* gdbeta = Up(std::vector<float>(d, 0.0f));
    gpu_->LayerNormBackward(gx, Up(gamma), Up(dy), rows, d, 1e-5f, gdx, gdgamma, gdbeta);
    EXPECT_LT(RelativeError(Down(gdx, rows * d), dx), 1e-5);
    EXPECT_LT(RelativeError(Down(gdgamma, d), dgamma), 1e-5);
    EXPECT_LT(RelativeError(Down(gdbeta, d), dbeta), 1e-5);
  }
}

TEST_F(CudaOps, ActivationForwardAndBackward) {
  Rng rng(5);
  const int64_t n = 5000;
  const auto x = RandomVector(n, rng, 3.0), dy = RandomVector(n, rng);
  for (Activation act : {Activation::kRelu, Activation::kGelu}) {
    std::vector<float> want = x, dwant(n);
    cpu_->Activate(act, want.data(), n);
    cpu_->ActivateBackward(act, x.data(), dy.data(), n, dwant.data());
    float* gx = Up(x);
    float* gdx = Poisoned(n);
    gpu_->ActivateBackward(act, gx, Up(dy), n, gdx);
    gpu_->Activate(act, gx, n);
    EXPECT_LT(RelativeError(Down(gx, n), want), 1e-6) << ActivationName(act);
    EXPECT_LT(RelativeError(Down(gdx, n), dwant), 1e-6) << ActivationName(act);
  }
}

TEST_F(CudaOps, FeatureMapsForwardAndBackward) {
  const int64_t rows = 40, d = 32, stride = 3 * d + 1;
  for (FeatureMapKind kind : testing::kAllFeatureMapKinds) {
    for (bool sum_norm : {false, true}) {
      if (sum_norm && kind == FeatureMapKind::kIdentity) continue;
      FeatureMapSpec spec{kind, 3, 48, sum_norm};
      SCOPED_TRACE(absl::StrCat(FeatureMapName(kind), " sum_norm ", sum_norm));
      Rng rng(6);
      const auto x = RandomVector(rows * stride, rng, 0.7);
      const auto omega = RandomVector(48 * d, rng, 0.3);
      const int64_t dp = spec.OutputDim(d);
      const auto dphi = RandomVector(rows * dp, rng);
      std::vector<float> phi(rows * dp), dx(rows * d);
      cpu_->FeatureMap(spec, x.data() + d, rows, d, stride, omega.data(), phi.data());
      cpu_->FeatureMapBackward(spec, x.data() + d, rows, d, stride, omega.data(), dphi.data(),
                               dx.data(), d);
      float* gx = Up(x);
      float* gomega = Up(omega);
      float* gphi = Poisoned(rows * dp);
      float* gdx = Poisoned(rows * d);
      gpu_->FeatureMap(spec, gx + d, rows, d, stride, gomega, gphi);
      gpu_->FeatureMapBackward(spec, gx + d, rows, d, stride, gomega, Up(dphi), gdx, d);
      EXPECT_LT(RelativeError(Down(gphi, rows * dp), phi), 1e-5);
      EXPECT_LT(RelativeError(Down(gdx, rows * d), dx), 1e-5);
    }
  }
}

// Favor's features for inputs whose raw exponentials overflow or underflow
// float (FeatureMap.FavorUnderSumNormalisation…): the GPU's are the CPU's.
TEST_F(CudaOps, FavorFeaturesOfLargeInputsMatchTheCpu) {
  const int64_t rows = 8, d = 256, m = 48;
  FeatureMapSpec spec{FeatureMapKind::kFavor, 1, static_cast<int32_t>(m), true};
  Rng rng(17);
  const auto omega = RandomVector(m * d, rng, 2.0);
  std::vector<float> x(rows * d);
  for (int64_t r = 0; r < rows; ++r) {  // along a row of Ω, or long and scattered
    for (int64_t i = 0; i < d; ++i) {
      x[r * d + i] = r % 2 == 0 ? omega[r * d + i] : static_cast<float>(rng.Normal() * 2.0);
    }
  }
  const int64_t dp = 2 * m;
  const auto dphi = RandomVector(rows * dp, rng);
  std::vector<float> phi(rows * dp), dx(rows * d);
  cpu_->FeatureMap(spec, x.data(), rows, d, d, omega.data(), phi.data());
  cpu_->FeatureMapBackward(spec, x.data(), rows, d, d, omega.data(), dphi.data(), dx.data(), d);
  for (float v : phi) ASSERT_TRUE(std::isfinite(v));
  for (float v : dx) ASSERT_TRUE(std::isfinite(v));
  float* gphi = Poisoned(rows * dp);
  float* gdx = Poisoned(rows * d);
  gpu_->FeatureMap(spec, Up(x), rows, d, d, Up(omega), gphi);
  gpu_->FeatureMapBackward(spec, Up(x), rows, d, d, Up(omega), Up(dphi), gdx, d);
  EXPECT_LT(RelativeError(Down(gphi, rows * dp), phi), 1e-5);
  EXPECT_LT(RelativeError(Down(gdx, rows * d), dx), 1e-5);
}

// A pool of slots laid out like the model's: S for all heads, then z.
struct PoolLayout {
  explicit PoolLayout(const FastWeightSpec& spec)
      : s_floats(spec.heads * spec.DPhi() * spec.DValue()),
        z_floats(spec.HasNormalizer() ? spec.heads * spec.DPhi() : 0) {}
  int64_t slot_floats() const { return s_floats + z_floats; }
  StateView View(float* base) const { return StateView{base, slot_floats(), 0, s_floats}; }
  std::vector<float> Random(int64_t slots, Rng& rng) const {
    auto v = RandomVector(slots * slot_floats(), rng, 0.1);
    for (int64_t s = 0; s < slots; ++s) {
      for (int64_t i = s_floats; i < slot_floats(); ++i) v[s * slot_floats() + i] = std::abs(v[s * slot_floats() + i]);
    }
    return v;
  }
  int64_t s_floats, z_floats;
};

std::string Name(const FastWeightSpec& s) {
  return absl::StrCat(UpdateRuleName(s.update), "+", FeatureMapName(s.phi.kind),
                      s.attention_normalizer ? "+normaliser" : "");
}

void CudaOps::CheckSequence(const FastWeightSpec& spec, int64_t batch, int64_t time) {
  SCOPED_TRACE(Name(spec));
  // Every other slot of the pool, in reverse order.
  const int64_t slots_in_pool = 2 * batch + 1, heads = spec.heads;
  std::vector<int32_t> slots(batch);
  for (int64_t i = 0; i < batch; ++i) slots[i] = static_cast<int32_t>(2 * (batch - i));
  Rng rng(7);
  const PoolLayout layout(spec);
  const auto initial = layout.Random(slots_in_pool, rng);
  const auto qkvb = RandomVector(batch * time * spec.RowWidth(), rng, 0.3);
  const auto omega = RandomVector(spec.phi.favor_features * spec.d_head, rng, 0.5);
  const auto dy = RandomVector(batch * time * heads * spec.DValue(), rng);
  const auto dfinal = RandomVector(slots_in_pool * layout.slot_floats(), rng);
  const int64_t ny = batch * time * heads * spec.DValue();

  std::vector<float> state = initial, y(ny);
  cpu_->FastWeightSequence(spec, qkvb.data(), omega.data(), slots.data(), batch, time,
                           layout.View(state.data()), y.data(), 64);
  std::vector<float> dqkvb(qkvb.size()), dstate = dfinal;
  cpu_->FastWeightSequenceBackward(spec, qkvb.data(), omega.data(), slots.data(), batch, time,
                                   layout.View(const_cast<float*>(initial.data())), dy.data(),
                                   dqkvb.data(), layout.View(dstate.data()), 16);

  float* gq = Up(qkvb);
  float* gomega = Up(omega);
  int32_t* gslots = Up(slots);
  // Chunk 1: the recurrent kernel; 16 and 64: the chunkwise one.
  for (int64_t chunk : {1, 16, 64}) {
    SCOPED_TRACE(absl::StrCat("forward chunk ", chunk));
    float* gstate = Up(initial);
    float* gy = Poisoned(ny);
    gpu_->FastWeightSequence(spec, gq, gomega, gslots, batch, time, layout.View(gstate), gy,
                             chunk);
    EXPECT_LT(RelativeError(Down(gy, ny), y), 1e-5) << "y";
    const auto got_state = Down(gstate, state.size());
    EXPECT_LT(RelativeError(got_state, state), 1e-5) << "final state";
    const int64_t f = layout.slot_floats();
    for (int32_t untouched = 0; untouched < slots_in_pool; ++untouched) {
      if (std::find(slots.begin(), slots.end(), untouched) != slots.end()) continue;
      EXPECT_EQ(0, std::memcmp(got_state.data() + untouched * f, initial.data() + untouched * f,
                               f * sizeof(float)))
          << "slot " << untouched;
    }
  }
  // Chunk 8: the recurrent backward; 16: the chunkwise one, where the shape
  // allows (one block for all of d_value, no normaliser).
  float* ginitial = Up(initial);
  float* gdy = Up(dy);
  for (int64_t chunk : {8, 16}) {
    SCOPED_TRACE(absl::StrCat("backward chunk ", chunk));
    float* gdq = Poisoned(qkvb.size());
    float* gdstate = Up(dfinal);
    gpu_->FastWeightSequenceBackward(spec, gq, gomega, gslots, batch, time,
                                     layout.View(ginitial), gdy, gdq, layout.View(gdstate), chunk);
    EXPECT_LT(RelativeError(Down(gdq, qkvb.size()), dqkvb), 1e-5) << "dqkvb";
    EXPECT_LT(RelativeError(Down(gdstate, dstate.size()), dstate), 1e-5) << "dstate";
  }
  EXPECT_EQ(Down(ginitial, initial.size()), initial) << "the backward wrote its input state";
}

TEST_F(CudaOps, FastWeightSequenceForwardAndBackward) {
  auto variants = testing::AllAttentionVariants(4, 32);
  for (const auto& v : testing::UnequalValueVariants(4, 32, 20)) variants.push_back(v);
  for (const FastWeightSpec& spec : variants) CheckSequence(spec, 3, 200);
}

// States too large for one block's shared memory (the synthetic task's
// one-hot values: d_value = S up to 600, DPFP-3 of 64 keys gives d_φ 384) are
// split into column tiles; the tiles' sums are added by a second kernel.
TEST_F(CudaOps, FastWeightStatesWiderThanSharedMemorySplitIntoColumnTiles) {
  for (auto [rule, norm, kind, nu, d_value] :
       {std::tuple{UpdateRule::kDelta, false, FeatureMapKind::kDpfp, 3, 600},
        {UpdateRule::kSum, true, FeatureMapKind::kDpfp, 2, 300},
        {UpdateRule::kSum, false, FeatureMapKind::kElu1, 1, 520},
        {UpdateRule::kDelta, false, FeatureMapKind::kDpfp, 1, 257}}) {
    FastWeightSpec spec;
    spec.update = rule;
    spec.attention_normalizer = norm;
    spec.heads = 2;
    spec.d_head = 64;
    spec.d_value = d_value;
    spec.scale = 1.0f;
    spec.phi.kind = kind;
    spec.phi.nu = nu;
    spec.phi.sum_norm = true;
    ASSERT_TRUE(gpu_->CheckAttention(spec).ok()) << Name(spec);
    CheckSequence(spec, 2, 70);
  }
}

TEST_F(CudaOps, ThousandDecodeStepsOverSixtyFourSlotsMatchTheCpu) {
  const int64_t heads = 4, d_head = 64, num_slots = 64, steps = 1000;
  for (const FastWeightSpec& spec : testing::AllAttentionVariants(heads, d_head)) {
    if (spec.phi.kind != FeatureMapKind::kDpfp && spec.phi.kind != FeatureMapKind::kElu1) continue;
    SCOPED_TRACE(Name(spec));
    Rng rng(8);
    const PoolLayout layout(spec);
    auto state = layout.Random(num_slots, rng);
    float* gstate = Up(state);
    const auto omega = RandomVector(spec.phi.favor_features * d_head, rng, 0.5);
    float* gomega = Up(omega);
    std::vector<int32_t> order(num_slots);
    std::iota(order.begin(), order.end(), 0);
    std::vector<double> ys, ys_ref;
    auto qkvb_buffer = Buffer::Allocate(*gpu_, num_slots * spec.RowWidth() * sizeof(float));
    auto slots_buffer = Buffer::Allocate(*gpu_, num_slots * sizeof(int32_t));
    auto y_buffer = Buffer::Allocate(*gpu_, num_slots * heads * d_head * sizeof(float));
    ASSERT_TRUE(qkvb_buffer.ok() && slots_buffer.ok() && y_buffer.ok());
    for (int64_t step = 0; step < steps; ++step) {
      for (int64_t i = num_slots - 1; i > 0; --i) std::swap(order[i], order[rng.Next() % (i + 1)]);
      const int64_t n = 1 + rng.Next() % num_slots;
      const auto qkvb = RandomVector(n * spec.RowWidth(), rng, 0.3);
      std::vector<float> y(n * heads * d_head);
      // Every 100 steps: the GPU's own pool before the step, whose untouched
      // slots must come out bit-identical (the CPU's pool has drifted from it
      // by rounding since the last re-alignment).
      const bool check = step % 100 == 0;
      const std::vector<float> before = check ? Down(gstate, state.size()) : std::vector<float>{};
      cpu_->FastWeightStep(spec, qkvb.data(), omega.data(), order.data(), n,
                           layout.View(state.data()), y.data());
      gpu_->CopyToDevice(qkvb_buffer->data(), qkvb.data(), qkvb.size() * sizeof(float));
      gpu_->CopyToDevice(slots_buffer->data(), order.data(), n * sizeof(int32_t));
      gpu_->FastWeightStep(spec, qkvb_buffer->f32(), gomega,
                           static_cast<const int32_t*>(slots_buffer->data()), n,
                           layout.View(gstate), y_buffer->f32());
      const auto gy = Down(y_buffer->f32(), n * heads * d_head);
      ys.insert(ys.end(), gy.begin(), gy.end());
      ys_ref.insert(ys_ref.end(), y.begin(), y.end());
      if (check) {  // untouched slots stay bit-identical on the GPU
        const auto got = Down(gstate, state.size());
        const int64_t f = layout.slot_floats();
        for (int64_t i = n; i < num_slots; ++i) {
          ASSERT_EQ(0, std::memcmp(got.data() + order[i] * f, before.data() + order[i] * f,
                                   f * sizeof(float)))
              << "slot " << order[i] << " changed at step " << step;
        }
        // Re-align the CPU reference with the GPU so drift cannot compound.
        EXPECT_LT(RelativeError(got, state), 1e-5) << "state at step " << step;
        state = got;
      }
    }
    EXPECT_LT(RelativeError(ys, ys_ref), 1e-5);
  }
}

// The GPU sampler picks the CPU's token for every kind of row (greedy, top-k,
// top-p, min-p, with ties and ±0 in the logits, NaNs in greedy rows), at a
// vocabulary that is not a power of two: the weights are the same integers
// on both (math::ExpWeight), so no row may differ.
TEST_F(CudaOps, SampleRowsMatchesTheCpu) {
  Rng rng(21);
  for (const int64_t vocab : {int64_t{5}, int64_t{3000}, int64_t{8192}}) {
    auto batch = testing::RandomSamplingBatch(96, vocab, rng);
    // NaNs in greedy rows are passed over, or win at index 0 (cpu::Argmax).
    batch.logits[0 * vocab + vocab - 1] = kNaN;                 // row 0: greedy
    if (vocab > 3) batch.logits[6 * vocab + 3] = kNaN;          // row 6: greedy
    batch.logits[12 * vocab + 0] = kNaN;                        // row 12: greedy
    std::vector<int32_t> cpu_tokens(batch.rows, -1), gpu_tokens(batch.rows, -1);
    ASSERT_TRUE(cpu_->SampleRows(batch.logits.data(), batch.rows, vocab,
                                 batch.sampling.data(), cpu_tokens.data()).ok());
    ASSERT_TRUE(gpu_->SampleRows(Up(batch.logits), batch.rows, vocab, batch.sampling.data(),
                                 gpu_tokens.data()).ok());
    EXPECT_EQ(gpu_tokens, cpu_tokens) << "vocab " << vocab;
  }
}

// A sampler capped to a few rows of scratch (FWP_CUDA_SAMPLER_BYTES) draws in
// pieces, and every token is still the CPU's.
TEST_F(CudaOps, SampleRowsInPiecesWhenItsScratchIsCapped) {
  Rng rng(22);
  const int64_t vocab = 3000;
  auto batch = testing::RandomSamplingBatch(96, vocab, rng);
  ::setenv("FWP_CUDA_SAMPLER_BYTES", std::to_string(5 * vocab * 12).c_str(), 1);
  auto capped = MakeCudaBackend(0);
  ::unsetenv("FWP_CUDA_SAMPLER_BYTES");
  ASSERT_TRUE(capped.ok()) << capped.status();
  std::vector<int32_t> cpu_tokens(batch.rows, -1), gpu_tokens(batch.rows, -1);
  ASSERT_TRUE(cpu_->SampleRows(batch.logits.data(), batch.rows, vocab, batch.sampling.data(),
                               cpu_tokens.data()).ok());
  float* logits = static_cast<float*>(*(*capped)->AllocateRaw(batch.logits.size() * 4));
  (*capped)->CopyToDevice(logits, batch.logits.data(), batch.logits.size() * 4);
  ASSERT_TRUE((*capped)->SampleRows(logits, batch.rows, vocab, batch.sampling.data(),
                                    gpu_tokens.data()).ok());
  (*capped)->FreeRaw(logits);
  EXPECT_EQ(gpu_tokens, cpu_tokens);
  int64_t sampled = 0;
  for (const auto& r : batch.sampling) sampled += !r.params.greedy();
  EXPECT_GT(sampled, 10) << "more sampled rows than one piece holds";
}

// The penalties change the very logits the CPU's do, to the bit, and only
// those; the draws from them then agree too.
TEST_F(CudaOps, PenaltiesMatchTheCpu) {
  Rng rng(23);
  const int64_t vocab = 3000;
  auto batch = testing::RandomSamplingBatch(40, vocab, rng);
  batch.logits[3 * vocab + 5] = kNaN;
  auto penalties = testing::RandomPenalties(batch.rows, vocab, rng);
  ASSERT_GT(penalties.size(), 1000u);
  // The NaN penalised both ways (it stays a NaN, whatever its bits).
  std::erase_if(penalties, [](const LogitPenalty& p) { return p.row == 3 && p.token == 5; });
  penalties.push_back({3, 5, 1.3f, 2, 0.4f, 0.15f});
  std::vector<float> cpu_logits = batch.logits;
  ASSERT_TRUE(cpu_->ApplyPenalties(cpu_logits.data(), vocab, penalties.data(),
                                   static_cast<int64_t>(penalties.size())).ok());
  float* gpu_logits = Up(batch.logits);
  ASSERT_TRUE(gpu_->ApplyPenalties(gpu_logits, vocab, penalties.data(),
                                   static_cast<int64_t>(penalties.size())).ok());
  const std::vector<float> down = Down(gpu_logits, batch.rows * vocab);
  int64_t changed = 0, differ = 0;
  for (size_t i = 0; i < down.size(); ++i) {
    const bool nan = std::isnan(down[i]) && std::isnan(cpu_logits[i]);
    differ += !nan && std::memcmp(&down[i], &cpu_logits[i], sizeof(float)) != 0;
    changed += !nan && cpu_logits[i] != batch.logits[i];
  }
  EXPECT_EQ(differ, 0) << "logits that differ in their bits";
  EXPECT_TRUE(std::isnan(down[3 * vocab + 5]));
  EXPECT_GT(changed, 1000);
  std::vector<int32_t> cpu_tokens(batch.rows, -1), gpu_tokens(batch.rows, -1);
  ASSERT_TRUE(cpu_->SampleRows(cpu_logits.data(), batch.rows, vocab, batch.sampling.data(),
                               cpu_tokens.data()).ok());
  ASSERT_TRUE(gpu_->SampleRows(gpu_logits, batch.rows, vocab, batch.sampling.data(),
                               gpu_tokens.data()).ok());
  EXPECT_EQ(gpu_tokens, cpu_tokens);
}

// The penalty table on the GPU: rows filled by SetPenaltyCounts, then
// applied, give the CPU twin's bits (which are the list's, sampling_test).
TEST_F(CudaOps, PenaltyTableMatchesTheCpu) {
  Rng rng(24);
  const int64_t rows = 40, table_rows = 53, vocab = 3000;
  const auto c = testing::RandomPenaltyTable(rows, table_rows, vocab, rng);
  const auto batch = testing::RandomSamplingBatch(rows, vocab, rng);
  // The device table starts as noise where rows are used: SetPenaltyCounts
  // must write every listed place, and the unlisted ones are zeroed first.
  std::vector<int32_t> start = c.table;
  for (const PenaltyRow& r : c.rows) {
    std::fill(start.begin() + r.table_row * vocab, start.begin() + (r.table_row + 1) * vocab, 0);
  }
  auto* table = static_cast<int32_t*>(Up(start));
  ASSERT_TRUE(gpu_->SetPenaltyCounts(table, vocab, c.entries.data(),
                                     static_cast<int64_t>(c.entries.size())).ok());
  const std::vector<int32_t> table_down = Down(table, table_rows * vocab);
  EXPECT_EQ(table_down, c.table);
  std::vector<float> cpu_logits = batch.logits;
  ASSERT_TRUE(cpu_->ApplyPenaltyRows(cpu_logits.data(), vocab, c.table.data(), c.rows.data(),
                                     static_cast<int64_t>(c.rows.size())).ok());
  float* gpu_logits = Up(batch.logits);
  ASSERT_TRUE(gpu_->ApplyPenaltyRows(gpu_logits, vocab, table, c.rows.data(),
                                     static_cast<int64_t>(c.rows.size())).ok());
  const std::vector<float> down = Down(gpu_logits, rows * vocab);
  int64_t changed = 0, differ = 0;
  for (size_t i = 0; i < down.size(); ++i) {
    differ += std::memcmp(&down[i], &cpu_logits[i], sizeof(float)) != 0;
    changed += cpu_logits[i] != batch.logits[i];
  }
  EXPECT_EQ(differ, 0) << "logits that differ in their bits";
  EXPECT_GT(changed, 1000);
}

TEST_F(CudaOps, SoftmaxCrossEntropyAndAdamW) {
  Rng rng(9);
  const int64_t rows = 20, vocab = 3000;
  const auto logits = RandomVector(rows * vocab, rng, 3.0);
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) targets[r] = r == 3 ? -1 : static_cast<int32_t>(rng.Next() % vocab);
  std::vector<float> losses(rows), dlogits(rows * vocab);
  cpu_->SoftmaxCrossEntropy(logits.data(), targets.data(), rows, vocab, losses.data(),
                            dlogits.data(), 0.05f);
  float* glosses = Poisoned(rows);
  float* gdlogits = Poisoned(rows * vocab);
  gpu_->SoftmaxCrossEntropy(Up(logits), Up(targets), rows, vocab, glosses, gdlogits, 0.05f);
  EXPECT_LT(RelativeError(Down(glosses, rows), losses), 1e-5);
  EXPECT_LT(RelativeError(Down(gdlogits, rows * vocab), dlogits), 1e-5);

  const int64_t n = 10000;
  auto param = RandomVector(n, rng), m = RandomVector(n, rng, 0.1), v = RandomVector(n, rng, 0.1);
  for (float& x : v) x = std::abs(x);
  const auto grad = RandomVector(n, rng);
  float* gp = Up(param);
  float* gm = Up(m);
  float* gv = Up(v);
  AdamWParams hp;
  hp.lr = 3e-3f;
  hp.weight_decay = 0.1f;
  hp.step = 7;
  cpu_->AdamW(param.data(), grad.data(), m.data(), v.data(), n, hp);
  gpu_->AdamW(gp, Up(grad), gm, gv, n, hp);
  EXPECT_LT(RelativeError(Down(gp, n), param), 1e-6);
  EXPECT_LT(RelativeError(Down(gm, n), m), 1e-6);
  EXPECT_LT(RelativeError(Down(gv, n), v), 1e-6);
}

TEST_F(CudaOps, TheWholeModelAgreesWithTheCpuModelInEveryForm) {
  Config c = testing::SizedConfig(512, 128, 3, 4, 32, 256);
  c.positions = Positions::kSinusoidal;
  const HostWeights weights = RandomWeights(c, 11, 0.1f);
  auto cpu_model = Model::Create(*cpu_, c, weights);
  auto gpu_model = Model::Create(*gpu_, c, weights);
  ASSERT_TRUE(cpu_model.ok() && gpu_model.ok());
  Rng rng(12);
  std::vector<int32_t> tokens(150);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.Next() % c.vocab_size);
  const int64_t V = c.vocab_size;
  auto run = [&](Model& model, int form) {  // 0 parallel, 1 chunked by 7, 2 recurrent
    auto pool = model.NewStatePool(2);
    const int32_t slot = 1;
    std::vector<float> logits(tokens.size() * V);
    for (size_t t0 = 0; t0 < tokens.size();) {
      const size_t n = form == 0 ? tokens.size() : form == 1 ? std::min<size_t>(7, tokens.size() - t0) : 1;
      auto piece = absl::MakeConstSpan(tokens).subspan(t0, n);
      auto status = form == 2 ? model.Step(**pool, {&slot, 1}, piece, logits.data() + t0 * V)
                              : model.Prefill(**pool, {&slot, 1}, piece, true, logits.data() + t0 * V);
      EXPECT_TRUE(status.ok()) << status;
      t0 += n;
    }
    return logits;
  };
  const auto want = run(**cpu_model, 0);
  for (int form : {0, 1, 2}) {
    EXPECT_LT(RelativeError(run(**gpu_model, form), want), 1e-4) << "form " << form;
  }
}

}  // namespace
}  // namespace fwp
