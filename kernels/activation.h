// FFN activation, applied in place: relu (the paper's FFN) or gelu (tanh form,
// as GPT-2). The CPU and CUDA versions evaluate the same float expression.
#pragma once

#include <cstdint>
#include <string_view>

namespace fwp {

enum class Activation { kRelu, kGelu };

const char* ActivationName(Activation a);

}  // namespace fwp

namespace fwp::cpu {

// x: [n], overwritten with act(x).
void Activate(Activation act, float* x, int64_t n);

// dx = dy · act'(x) from the pre-activation x; dx may alias dy.
void ActivateBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx);

}  // namespace fwp::cpu
