// tools/cuda_emulation driver: feature_map.cu, layernorm.cu, cross_entropy.cu,
// activation.cu, embedding.cu and adamw.cu emulated on the CPU against their
// CPU twins on fresh random inputs, outputs poisoned (NaN) first; relative
// error under 1e-5.
#include "kernels/cuda_common.cuh"
#include FEATURE_MAP_INC
#include LAYERNORM_INC
#include CROSS_ENTROPY_INC
#include ACTIVATION_INC
#include EMBEDDING_INC
#include ADAMW_INC

#include <cstdio>
#include <limits>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "tests/reference.h"
#include "tools/cuda_emulation/check.h"

namespace {

using fwp::testing::RandomVector;
using fwp::emulation::Check;
using fwp::emulation::failures;
using fwp::emulation::Poison;

// Rows `stride` apart, `d` wide: the elements an op with strided rows owns.
std::vector<float> Rows(const std::vector<float>& v, int64_t rows, int64_t d, int64_t stride) {
  std::vector<float> out;
  for (int64_t r = 0; r < rows; ++r) out.insert(out.end(), &v[r * stride], &v[r * stride] + d);
  return out;
}

}  // namespace

int main() {
  using namespace fwp;
  Rng rng(21);
  // Feature maps, forward and backward, reading rows in place (stride > d).
  const int64_t rows = 5, d = 16, stride = 20;
  for (FeatureMapKind kind : {FeatureMapKind::kDpfp, FeatureMapKind::kElu1, FeatureMapKind::kRelu,
                              FeatureMapKind::kIdentity, FeatureMapKind::kFavor}) {
    FeatureMapSpec spec;
    spec.kind = kind;
    spec.nu = 2;
    spec.favor_features = 12;
    spec.sum_norm = kind != FeatureMapKind::kIdentity;
    const int64_t dp = spec.OutputDim(d);
    const auto x = RandomVector(rows * stride, rng);
    const auto omega = RandomVector(spec.favor_features * d, rng, 0.5);
    const auto dphi = RandomVector(rows * dp, rng);
    std::vector<float> phi(rows * dp), got = Poison(rows * dp);
    cpu::FeatureMap(spec, x.data(), rows, d, stride, omega.data(), phi.data());
    cuda::FeatureMap(nullptr, spec, x.data(), rows, d, stride, omega.data(), got.data());
    Check((std::string(FeatureMapName(kind)) + " forward").c_str(), got, phi);
    std::vector<float> dx = Poison(rows * stride), gdx = Poison(rows * stride);
    cpu::FeatureMapBackward(spec, x.data(), rows, d, stride, omega.data(), dphi.data(), dx.data(),
                            stride);
    cuda::FeatureMapBackward(nullptr, spec, x.data(), rows, d, stride, omega.data(), dphi.data(),
                             gdx.data(), stride);
    Check((std::string(FeatureMapName(kind)) + " backward").c_str(), Rows(gdx, rows, d, stride),
          Rows(dx, rows, d, stride));
  }
  // LayerNorm: several rows per block, and the backward's accumulating outputs;
  // 13 rows (one part of the column sums), then 600 (three, the last partial).
  for (const int64_t n : {13, 600}) {
    const int64_t w = 48;
    const float eps = 1e-5f;
    const auto x = RandomVector(n * w, rng), gamma = RandomVector(w, rng),
               beta = RandomVector(w, rng), dy = RandomVector(n * w, rng);
    std::vector<float> y(n * w), gy = Poison(n * w);
    cpu::LayerNorm(x.data(), gamma.data(), beta.data(), n, w, eps, y.data());
    cuda::LayerNorm(nullptr, x.data(), gamma.data(), beta.data(), n, w, eps, gy.data());
    Check("layernorm forward", gy, y);
    const auto dx0 = RandomVector(n * w, rng), dg0 = RandomVector(w, rng),
               db0 = RandomVector(w, rng);
    std::vector<float> dx = dx0, dg = dg0, db = db0, gdx = dx0, gdg = dg0, gdb = db0;
    std::vector<float> scratch = Poison(cuda::LayerNormBackwardScratch(n, w));
    cpu::LayerNormBackward(x.data(), gamma.data(), dy.data(), n, w, eps, dx.data(), dg.data(),
                           db.data());
    cuda::LayerNormBackward(nullptr, x.data(), gamma.data(), dy.data(), n, w, eps, gdx.data(),
                            gdg.data(), gdb.data(), scratch.data());
    Check("layernorm backward dx", gdx, dx);
    Check("layernorm backward dgamma", gdg, dg);
    Check("layernorm backward dbeta", gdb, db);
  }
  // Softmax cross-entropy, loss and gradient.
  {
    const int64_t n = 6, vocab = 300;
    const auto logits = RandomVector(n * vocab, rng, 4.0);
    std::vector<int32_t> targets(n);
    for (auto& t : targets) t = static_cast<int32_t>(rng.Next() % vocab);
    std::vector<float> loss(n), dl(n * vocab), gloss = Poison(n), gdl = Poison(n * vocab);
    cpu::SoftmaxCrossEntropy(logits.data(), targets.data(), n, vocab, loss.data(), dl.data(),
                             0.25f);
    cuda::SoftmaxCrossEntropy(nullptr, logits.data(), targets.data(), n, vocab, gloss.data(),
                              gdl.data(), 0.25f);
    Check("cross-entropy losses", gloss, loss);
    Check("cross-entropy dlogits", gdl, dl);
  }
  // Activations, forward (in place) and backward.
  for (Activation act : {Activation::kRelu, Activation::kGelu}) {
    const int64_t n = 1000;
    const auto x = RandomVector(n, rng, 3.0), dy = RandomVector(n, rng);
    std::vector<float> y = x, gy = x, dx(n), gdx = Poison(n);
    cpu::Activate(act, y.data(), n);
    cuda::Activate(nullptr, act, gy.data(), n);
    Check((std::string(ActivationName(act)) + " forward").c_str(), gy, y);
    cpu::ActivateBackward(act, x.data(), dy.data(), n, dx.data());
    cuda::ActivateBackward(nullptr, act, x.data(), dy.data(), n, gdx.data());
    Check((std::string(ActivationName(act)) + " backward").c_str(), gdx, dx);
  }
  // Embedding with and without positions; the backward adds repeated
  // tokens' rows together.
  {
    const int64_t vocab = 11, w = 24, n = 30;
    const auto table = RandomVector(vocab * w, rng), dout = RandomVector(n * w, rng);
    std::vector<int32_t> tokens(n);
    std::vector<int64_t> positions(n);
    for (int64_t i = 0; i < n; ++i) {
      tokens[i] = static_cast<int32_t>(rng.Next() % vocab);
      positions[i] = static_cast<int64_t>(rng.Next() % 500);
    }
    for (const int64_t* pos : {static_cast<const int64_t*>(nullptr),
                               static_cast<const int64_t*>(positions.data())}) {
      std::vector<float> out(n * w), gout = Poison(n * w);
      cpu::Embedding(tokens.data(), pos, n, table.data(), w, out.data());
      cuda::Embedding(nullptr, tokens.data(), pos, n, table.data(), w, gout.data());
      Check(pos ? "embedding with positions" : "embedding", gout, out);
    }
    const auto dtable0 = RandomVector(vocab * w, rng);
    std::vector<float> dtable = dtable0, gdtable = dtable0;
    cpu::EmbeddingBackward(tokens.data(), n, dout.data(), w, dtable.data());
    cuda::EmbeddingBackward(nullptr, tokens.data(), n, dout.data(), w, gdtable.data());
    Check("embedding backward", gdtable, dtable);
  }
  // AdamW and the gradient norm's sum of squares.
  {
    const int64_t n = 3000;
    const auto grad = RandomVector(n, rng);
    const auto p0 = RandomVector(n, rng), m0 = RandomVector(n, rng, 0.1);
    auto v0 = RandomVector(n, rng, 0.1);
    for (float& x : v0) x = std::abs(x);
    AdamWParams params;
    params.lr = 3e-3f;
    params.weight_decay = 0.1f;
    params.step = 7;
    params.grad_scale = 0.5f;
    std::vector<float> p = p0, m = m0, v = v0, gp = p0, gm = m0, gv = v0;
    cpu::AdamW(p.data(), grad.data(), m.data(), v.data(), n, params);
    cuda::AdamW(nullptr, gp.data(), grad.data(), gm.data(), gv.data(), n, params);
    Check("adamw parameters", gp, p);
    Check("adamw first moments", gm, m);
    Check("adamw second moments", gv, v);
    std::vector<double> partial(cuda::SumSquaresBlocks(n),
                                std::numeric_limits<double>::quiet_NaN());
    cuda::SumSquares(nullptr, grad.data(), n, partial.data());
    double sum = 0;
    for (double x : partial) sum += x;
    Check("sum of squares", {static_cast<float>(sum)},
          {static_cast<float>(cpu::SumSquares(grad.data(), n))});
  }
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
