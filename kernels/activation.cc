#include "kernels/activation.h"

#include <cmath>

namespace fwp {

const char* ActivationName(Activation a) {
  return a == Activation::kRelu ? "relu" : "gelu";
}

}  // namespace fwp

namespace fwp::cpu {

void Activate(Activation act, float* x, int64_t n) {
  if (act == Activation::kRelu) {
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return;
  }
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    float inner = kSqrt2OverPi * (v + 0.044715f * v * v * v);
    x[i] = 0.5f * v * (1.0f + std::tanh(inner));
  }
}

}  // namespace fwp::cpu
