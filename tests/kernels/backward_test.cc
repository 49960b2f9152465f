// Backward of matmul, embedding, LayerNorm and the activations against
// central finite differences in float64; the fused cross-entropy and AdamW
// against float64 loops.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/activation.h"
#include "kernels/adamw.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "tests/reference.h"

namespace fwp {
namespace {

using testing::NumericGradient;
using testing::RandomVector;
using testing::RelativeError;

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(MatmulBackward, MatchesFiniteDifferences) {
  Rng rng(1);
  const int64_t m = 5, n = 7, k = 9;
  const auto a = RandomVector(m * k, rng), b = RandomVector(n * k, rng);
  const auto bias = RandomVector(n, rng), g = RandomVector(m * n, rng);
  // L = Σ g · (a bᵀ + bias)
  auto loss = [&](const std::vector<double>& a_, const std::vector<double>& b_,
                  const std::vector<double>& bias_) {
    double l = 0;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double c = bias_[j];
        for (int64_t p = 0; p < k; ++p) c += a_[i * k + p] * b_[j * k + p];
        l += g[i * n + j] * c;
      }
    }
    return l;
  };
  std::vector<float> da(m * k, std::numeric_limits<float>::quiet_NaN());
  auto db = RandomVector(n * k, rng);  // gradients accumulate onto what is there
  auto dbias = RandomVector(n, rng);
  const auto db0 = db, dbias0 = dbias;
  cpu::MatmulBackward(g.data(), a.data(), b.data(), da.data(), db.data(), dbias.data(), m, n, k);
  const auto A = ToDouble(a), B = ToDouble(b), Bias = ToDouble(bias);
  EXPECT_LT(RelativeError(da, NumericGradient(A, [&](auto& x) { return loss(x, B, Bias); })), 1e-6);
  auto db_ref = NumericGradient(B, [&](auto& x) { return loss(A, x, Bias); });
  for (size_t i = 0; i < db_ref.size(); ++i) db_ref[i] += db0[i];
  EXPECT_LT(RelativeError(db, db_ref), 1e-6);
  auto dbias_ref = NumericGradient(Bias, [&](auto& x) { return loss(A, B, x); });
  for (size_t i = 0; i < dbias_ref.size(); ++i) dbias_ref[i] += dbias0[i];
  EXPECT_LT(RelativeError(dbias, dbias_ref), 1e-6);
}

TEST(EmbeddingBackward, AddsEachRowsGradientToItsToken) {
  Rng rng(2);
  const int64_t vocab = 6, d = 4;
  const std::vector<int32_t> tokens = {3, 1, 3, 5};
  const auto dout = RandomVector(4 * d, rng);
  std::vector<float> dtable(vocab * d, 0.5f);
  cpu::EmbeddingBackward(tokens.data(), 4, dout.data(), d, dtable.data());
  for (int64_t j = 0; j < d; ++j) {
    EXPECT_FLOAT_EQ(dtable[3 * d + j], 0.5f + dout[0 * d + j] + dout[2 * d + j]);
    EXPECT_FLOAT_EQ(dtable[1 * d + j], 0.5f + dout[1 * d + j]);
    EXPECT_FLOAT_EQ(dtable[0 * d + j], 0.5f);
  }
}

TEST(LayerNormBackward, MatchesFiniteDifferences) {
  Rng rng(3);
  const int64_t rows = 4, d = 11;
  const float eps = 1e-5f;
  const auto x = RandomVector(rows * d, rng, 2.0), gamma = RandomVector(d, rng);
  const auto beta = RandomVector(d, rng), g = RandomVector(rows * d, rng);
  auto loss = [&](const std::vector<double>& x_, const std::vector<double>& gamma_,
                  const std::vector<double>& beta_) {
    double l = 0;
    for (int64_t r = 0; r < rows; ++r) {
      double mean = 0, var = 0;
      for (int64_t j = 0; j < d; ++j) mean += x_[r * d + j] / d;
      for (int64_t j = 0; j < d; ++j) var += (x_[r * d + j] - mean) * (x_[r * d + j] - mean) / d;
      for (int64_t j = 0; j < d; ++j) {
        l += g[r * d + j] * ((x_[r * d + j] - mean) / std::sqrt(var + eps) * gamma_[j] + beta_[j]);
      }
    }
    return l;
  };
  auto dx = RandomVector(rows * d, rng);  // activation gradients add (+=)
  const auto dx0 = dx;
  std::vector<float> dgamma(d, 0.0f), dbeta(d, 0.0f);
  cpu::LayerNormBackward(x.data(), gamma.data(), g.data(), rows, d, eps, dx.data(), dgamma.data(),
                         dbeta.data());
  const auto X = ToDouble(x), G = ToDouble(gamma), Bt = ToDouble(beta);
  auto dx_ref = NumericGradient(X, [&](auto& v) { return loss(v, G, Bt); });
  for (size_t i = 0; i < dx_ref.size(); ++i) dx_ref[i] += dx0[i];
  EXPECT_LT(RelativeError(dx, dx_ref), 1e-6);
  EXPECT_LT(RelativeError(dgamma, NumericGradient(G, [&](auto& v) { return loss(X, v, Bt); })), 1e-6);
  EXPECT_LT(RelativeError(dbeta, NumericGradient(Bt, [&](auto& v) { return loss(X, G, v); })), 1e-6);
}

TEST(ActivationBackward, MatchesFiniteDifferences) {
  Rng rng(4);
  const auto x = RandomVector(200, rng, 2.0), g = RandomVector(200, rng);
  for (Activation act : {Activation::kRelu, Activation::kGelu}) {
    auto loss = [&](const std::vector<double>& v) {
      double l = 0;
      for (size_t i = 0; i < v.size(); ++i) {
        const double a = act == Activation::kRelu
                             ? std::max(v[i], 0.0)
                             : 0.5 * v[i] * (1 + std::tanh(std::sqrt(2 / M_PI) *
                                                           (v[i] + 0.044715 * v[i] * v[i] * v[i])));
        l += g[i] * a;
      }
      return l;
    };
    std::vector<float> dx(200);
    cpu::ActivateBackward(act, x.data(), g.data(), 200, dx.data());
    EXPECT_LT(RelativeError(dx, NumericGradient(ToDouble(x), loss)), 1e-5) << ActivationName(act);
  }
}

TEST(SoftmaxCrossEntropy, LossAndGradientMatchFloat64AndIgnoredRowsAreZero) {
  Rng rng(5);
  const int64_t rows = 6, vocab = 1000;
  auto logits = RandomVector(rows * vocab, rng, 4.0);
  logits[7] = 80.0f;  // a large logit must not overflow
  const std::vector<int32_t> targets = {3, 999, -1, 0, 512, 7};
  std::vector<float> losses(rows), dlogits(rows * vocab);
  const float dloss = 1.0f / 5;
  cpu::SoftmaxCrossEntropy(logits.data(), targets.data(), rows, vocab, losses.data(),
                           dlogits.data(), dloss);
  std::vector<double> loss_ref(rows, 0.0), grad_ref(rows * vocab, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    double max = -1e300, sum = 0;
    for (int64_t j = 0; j < vocab; ++j) max = std::max(max, double(logits[r * vocab + j]));
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(logits[r * vocab + j]) - max);
    loss_ref[r] = max + std::log(sum) - logits[r * vocab + targets[r]];
    for (int64_t j = 0; j < vocab; ++j) {
      grad_ref[r * vocab + j] =
          (std::exp(double(logits[r * vocab + j]) - max) / sum - (j == targets[r])) * dloss;
    }
  }
  EXPECT_LT(RelativeError(losses, loss_ref), 1e-6);
  EXPECT_LT(RelativeError(dlogits, grad_ref), 1e-6);
  EXPECT_EQ(losses[2], 0.0f);
  for (int64_t j = 0; j < vocab; ++j) ASSERT_EQ(dlogits[2 * vocab + j], 0.0f);
  // Forward only, in place of nothing.
  std::vector<float> losses2(rows);
  cpu::SoftmaxCrossEntropy(logits.data(), targets.data(), rows, vocab, losses2.data(), nullptr, 1);
  EXPECT_EQ(losses2, losses);
}

TEST(AdamW, MatchesTheFloat64UpdateOverSeveralSteps) {
  Rng rng(6);
  const int64_t n = 50;
  auto param = RandomVector(n, rng);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  std::vector<double> p64(param.begin(), param.end()), m64(n, 0.0), v64(n, 0.0);
  AdamWParams hp;
  hp.lr = 1e-2f;
  hp.weight_decay = 0.1f;
  for (int64_t step = 1; step <= 5; ++step) {
    const auto grad = RandomVector(n, rng);
    hp.step = step;
    cpu::AdamW(param.data(), grad.data(), m.data(), v.data(), n, hp);
    for (int64_t i = 0; i < n; ++i) {
      p64[i] -= double(hp.lr) * hp.weight_decay * p64[i];
      m64[i] = 0.9 * m64[i] + 0.1 * grad[i];
      v64[i] = 0.999 * v64[i] + 0.001 * double(grad[i]) * grad[i];
      const double mh = m64[i] / (1 - std::pow(0.9, step));
      const double vh = v64[i] / (1 - std::pow(0.999, step));
      p64[i] -= hp.lr * mh / (std::sqrt(vh) + 1e-8);
    }
  }
  EXPECT_LT(RelativeError(param, p64), 1e-6);
}

}  // namespace
}  // namespace fwp
