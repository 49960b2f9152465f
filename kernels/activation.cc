#include "kernels/activation.h"

#include <cmath>

#include "kernels/shared_math.h"

namespace fwp {

const char* ActivationName(Activation a) {
  return a == Activation::kRelu ? "relu" : "gelu";
}

}  // namespace fwp

namespace fwp::cpu {

void Activate(Activation act, float* x, int64_t n) {
  if (act == Activation::kRelu) {
    for (int64_t i = 0; i < n; ++i) x[i] = math::Relu(x[i]);
    return;
  }
  for (int64_t i = 0; i < n; ++i) x[i] = math::Gelu(x[i]);
}

void ActivateBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx) {
  if (act == Activation::kRelu) {
    for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
    return;
  }
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * math::GeluGrad(x[i]);
}

}  // namespace fwp::cpu
