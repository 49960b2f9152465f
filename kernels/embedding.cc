#include "kernels/embedding.h"

#include <cmath>
#include <cstring>

namespace fwp {

double SinusoidalCode(int64_t position, int64_t j, int64_t d) {
  int64_t pair = j / 2;
  double inv_freq = std::pow(10000.0, -2.0 * static_cast<double>(pair) /
                                          static_cast<double>(d));
  double angle = static_cast<double>(position) * inv_freq;
  return (j % 2 == 0) ? std::sin(angle) : std::cos(angle);
}

}  // namespace fwp

namespace fwp::cpu {

void Embedding(const int32_t* tokens, const int64_t* positions, int64_t n,
               const float* table, int64_t d, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = out + i * d;
    std::memcpy(row, table + static_cast<int64_t>(tokens[i]) * d,
                sizeof(float) * d);
    if (positions != nullptr) {
      for (int64_t j = 0; j < d; ++j) {
        row[j] += static_cast<float>(SinusoidalCode(positions[i], j, d));
      }
    }
  }
}

void EmbeddingBackward(const int32_t* tokens, int64_t n, const float* dout, int64_t d,
                       float* dtable) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = dtable + static_cast<int64_t>(tokens[i]) * d;
    const float* g = dout + i * d;
    for (int64_t j = 0; j < d; ++j) row[j] += g[j];
  }
}

}  // namespace fwp::cpu
