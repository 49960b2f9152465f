#include "kernels/adamw.h"

#include <cmath>

namespace fwp::cpu {

void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWParams& p) {
  const float correction1 = 1.0f - std::pow(p.beta1, static_cast<float>(p.step));
  const float correction2 = 1.0f - std::pow(p.beta2, static_cast<float>(p.step));
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * p.grad_scale;
    m[i] = p.beta1 * m[i] + (1.0f - p.beta1) * g;
    v[i] = p.beta2 * v[i] + (1.0f - p.beta2) * g * g;
    const float m_hat = m[i] / correction1;
    const float v_hat = v[i] / correction2;
    param[i] -= p.lr * (m_hat / (std::sqrt(v_hat) + p.eps) + p.weight_decay * param[i]);
  }
}

double SumSquares(const float* x, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
  return acc;
}

}  // namespace fwp::cpu
