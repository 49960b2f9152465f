// LayerNorm over the last dimension: y = (x − mean) / sqrt(var + eps) · γ + β,
// with the biased variance (as torch.nn.LayerNorm). Statistics accumulate in
// double on the CPU so the reference does not drift on wide rows.
#pragma once

#include <cstdint>

namespace fwp::cpu {

// x, y: [rows, d] (may alias), gamma, beta: [d].
void LayerNorm(const float* x, const float* gamma, const float* beta,
               int64_t rows, int64_t d, float eps, float* y);

}  // namespace fwp::cpu
