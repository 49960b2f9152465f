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

void LayerNormBackward(const float* x, const float* gamma, const float* dy, int64_t rows,
                       int64_t d, float eps, float* dx, float* dgamma, float* dbeta) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    const float* gr = dy + r * d;
    double sum = 0.0;
    for (int64_t j = 0; j < d; ++j) sum += xr[j];
    const double mean = sum / static_cast<double>(d);
    double sq = 0.0;
    for (int64_t j = 0; j < d; ++j) sq += (xr[j] - mean) * (xr[j] - mean);
    const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(d) + eps);
    // dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · γ.
    double mean_g = 0.0, mean_gx = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double xhat = (xr[j] - mean) * rstd;
      const double g = static_cast<double>(gr[j]) * gamma[j];
      mean_g += g;
      mean_gx += g * xhat;
      dgamma[j] += static_cast<float>(gr[j] * xhat);
      dbeta[j] += gr[j];
    }
    mean_g /= static_cast<double>(d);
    mean_gx /= static_cast<double>(d);
    float* dxr = dx + r * d;
    for (int64_t j = 0; j < d; ++j) {
      const double xhat = (xr[j] - mean) * rstd;
      const double g = static_cast<double>(gr[j]) * gamma[j];
      dxr[j] += static_cast<float>(rstd * (g - mean_g - xhat * mean_gx));
    }
  }
}

}  // namespace fwp::cpu
