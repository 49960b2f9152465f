#include "kernels/layernorm.h"

#include <cmath>

namespace fwp::cpu {

void LayerNorm(const float* x, const float* gamma, const float* beta,
               int64_t rows, int64_t d, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    double sum = 0.0;
    for (int64_t j = 0; j < d; ++j) sum += xr[j];
    double mean = sum / static_cast<double>(d);
    double sq = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      double c = xr[j] - mean;
      sq += c * c;
    }
    double rstd = 1.0 / std::sqrt(sq / static_cast<double>(d) + eps);
    for (int64_t j = 0; j < d; ++j) {
      yr[j] = static_cast<float>((xr[j] - mean) * rstd) * gamma[j] + beta[j];
    }
  }
}

}  // namespace fwp::cpu
