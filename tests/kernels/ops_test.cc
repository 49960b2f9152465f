// matmul, embedding, LayerNorm and the FFN activation against float64 loops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/activation.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "tests/reference.h"

namespace fwp {
namespace {

using testing::RandomVector;
using testing::RelativeError;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Both CPU matmuls: the batch-invariant one (serving) and the BLAS one in
// row blocks (training), m = 130 spanning several blocks.
TEST(Matmul, MatchesFloat64WithAndWithoutBiasAndAccumulation) {
  Rng rng(1);
  for (auto matmul : {&cpu::Matmul, &cpu::MatmulBlas})
  for (auto [m, n, k] : {std::tuple{1, 7, 5}, {33, 65, 129}, {130, 96, 256}}) {
    const auto a = RandomVector(m * k, rng), b = RandomVector(n * k, rng);
    const auto bias = RandomVector(n, rng), c0 = RandomVector(m * n, rng);
    for (bool use_bias : {false, true}) {
      for (bool accumulate : {false, true}) {
        std::vector<float> c = accumulate ? c0 : std::vector<float>(m * n, kNaN);
        matmul(a.data(), b.data(), use_bias ? bias.data() : nullptr, c.data(), m, n, k,
               accumulate);
        std::vector<double> ref(m * n);
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) {
            double acc = accumulate ? c0[i * n + j] : 0.0;
            if (use_bias) acc += bias[j];
            for (int p = 0; p < k; ++p) acc += double(a[i * k + p]) * b[j * k + p];
            ref[i * n + j] = acc;
          }
        }
        EXPECT_LT(RelativeError(c, ref), 1e-5)
            << (matmul == &cpu::MatmulBlas ? "blas " : "") << m << "x" << n << "x" << k;
      }
    }
  }
}

TEST(Matmul, EachRowIsBitIdenticalWhateverTheNumberOfRows) {
  // k not a multiple of 8 and n not of 4 exercise every tail; m = 67 spans
  // several row blocks, thread tasks and both tile heights.
  // k = 256 takes the four-column reduction with no k tail; both k, with and
  // without accumulation, against every tile height.
  Rng rng(9);
  const int64_t m = 67, n = 1029;
  for (int64_t k : {261, 256}) {
    for (bool accumulate : {false, true}) {
      const auto a = RandomVector(m * k, rng), b = RandomVector(n * k, rng);
      const auto bias = RandomVector(n, rng), c0 = RandomVector(m * n, rng);
      std::vector<float> all = c0;
      cpu::Matmul(a.data(), b.data(), bias.data(), all.data(), m, n, k, accumulate);
      for (int64_t start : {0, 1, 2, 5, 31, 66}) {
        for (int64_t rows : {1, 2, 3, 4, 7, 16}) {
          if (start + rows > m) continue;
          std::vector<float> some(c0.begin() + start * n, c0.begin() + (start + rows) * n);
          cpu::Matmul(a.data() + start * k, b.data(), bias.data(), some.data(), rows, n, k,
                      accumulate);
          ASSERT_EQ(0, std::memcmp(some.data(), all.data() + start * n, rows * n * sizeof(float)))
              << "k " << k << (accumulate ? " accumulating" : "") << ", rows " << start << ".."
              << start + rows;
        }
      }
    }
  }
}

TEST(Embedding, GathersRowsAndAddsSinusoidalPositions) {
  Rng rng(2);
  const int64_t vocab = 50, d = 16, n = 9;
  const auto table = RandomVector(vocab * d, rng);
  std::vector<int32_t> tokens(n);
  std::vector<int64_t> positions(n);
  for (int64_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<int32_t>(rng.Next() % vocab);
    positions[i] = static_cast<int64_t>(rng.Next() % 100000);
  }
  std::vector<float> out(n * d, kNaN), plain(n * d, kNaN);
  cpu::Embedding(tokens.data(), positions.data(), n, table.data(), d, out.data());
  cpu::Embedding(tokens.data(), nullptr, n, table.data(), d, plain.data());
  std::vector<double> ref(n * d), ref_plain(n * d);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < d; ++j) {
      const double freq = std::pow(10000.0, -double(2 * (j / 2)) / d);
      const double pe = j % 2 == 0 ? std::sin(positions[i] * freq) : std::cos(positions[i] * freq);
      ref_plain[i * d + j] = table[tokens[i] * d + j];
      ref[i * d + j] = ref_plain[i * d + j] + pe;
    }
  }
  EXPECT_EQ(RelativeError(plain, ref_plain), 0.0);
  EXPECT_LT(RelativeError(out, ref), 1e-6);
}

TEST(LayerNorm, MatchesFloat64AndAllowsInPlace) {
  Rng rng(3);
  const int64_t rows = 23, d = 200;
  auto x = RandomVector(rows * d, rng, 3.0);
  for (float& v : x) v += 5.0f;  // a large mean stresses the variance
  const auto gamma = RandomVector(d, rng), beta = RandomVector(d, rng);
  std::vector<float> y(rows * d, kNaN);
  cpu::LayerNorm(x.data(), gamma.data(), beta.data(), rows, d, 1e-5f, y.data());
  std::vector<double> ref(rows * d);
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < d; ++j) mean += x[r * d + j];
    mean /= d;
    for (int64_t j = 0; j < d; ++j) var += (x[r * d + j] - mean) * (x[r * d + j] - mean);
    var /= d;
    for (int64_t j = 0; j < d; ++j) {
      ref[r * d + j] = (x[r * d + j] - mean) / std::sqrt(var + 1e-5) * gamma[j] + beta[j];
    }
  }
  EXPECT_LT(RelativeError(y, ref), 1e-6);
  cpu::LayerNorm(x.data(), gamma.data(), beta.data(), rows, d, 1e-5f, x.data());
  EXPECT_EQ(x, y);
}

TEST(Activation, ReluAndGeluMatchFloat64) {
  Rng rng(4);
  const auto x = RandomVector(1000, rng, 3.0);
  for (Activation act : {Activation::kRelu, Activation::kGelu}) {
    auto y = x;
    cpu::Activate(act, y.data(), y.size());
    std::vector<double> ref(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = x[i];
      ref[i] = act == Activation::kRelu
                   ? std::max(v, 0.0)
                   : 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    }
    EXPECT_LT(RelativeError(y, ref), 1e-6) << ActivationName(act);
  }
}

}  // namespace
}  // namespace fwp
