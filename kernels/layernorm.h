// LayerNorm over the last dimension: y = (x − mean) / sqrt(var + eps) · γ + β,
// with the biased variance (as torch.nn.LayerNorm). Statistics accumulate in
// double on the CPU so the reference does not drift on wide rows.
#pragma once

#include <cstdint>

namespace fwp::cpu {

// x, y: [rows, d] (may alias), gamma, beta: [d].
void LayerNorm(const float* x, const float* gamma, const float* beta,
               int64_t rows, int64_t d, float eps, float* y);

// Backward from dy [rows, d] and the forward input x (statistics recomputed):
// dx += ∂L/∂x (activation gradients add into the residual stream's),
// dgamma += Σ dy·x̂, dbeta += Σ dy (parameter gradients accumulate).
void LayerNormBackward(const float* x, const float* gamma, const float* dy, int64_t rows,
                       int64_t d, float eps, float* dx, float* dgamma, float* dbeta);

}  // namespace fwp::cpu
