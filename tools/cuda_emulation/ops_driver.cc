// tools/cuda_emulation driver: feature_map.cu, layernorm.cu and
// cross_entropy.cu emulated on the CPU against their CPU twins on fresh random
// inputs, outputs poisoned (NaN) first; relative error under 1e-5.
#include "kernels/cuda_common.cuh"
#include FEATURE_MAP_INC
#include LAYERNORM_INC
#include CROSS_ENTROPY_INC

#include <cstdio>
#include <limits>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/layernorm.h"
#include "tests/reference.h"

namespace {

using fwp::testing::RandomVector;
using fwp::testing::RelativeError;

int failures = 0;

void Check(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
  size_t nans = 0;
  for (float x : got) nans += std::isnan(x);
  const double rel = RelativeError(got, want);
  std::printf("%-40s rel %.3g%s\n", what, rel, nans ? " (NaN: unwritten)" : "");
  if (!(rel < 1e-5) || nans) ++failures;
}

std::vector<float> Poison(size_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

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
  // LayerNorm: several rows per block, and the backward's accumulating outputs.
  {
    const int64_t n = 13, w = 48;
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
    std::vector<float> scratch = Poison(2 * n);
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
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
