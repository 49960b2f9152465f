// AdamW with decoupled weight decay (Loshchilov & Hutter), as
// torch.optim.AdamW: p ← p − lr·wd·p; m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
// p ← p − lr · m̂ / (√v̂ + eps) with m̂ = m / (1−β1^t), v̂ = v / (1−β2^t).
// Master weights and moments are float32.
#pragma once

#include <cstdint>

namespace fwp {

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;  // 1-based, after this update
  float grad_scale = 1.0f;  // multiplies every gradient (norm clipping)
};

}  // namespace fwp

namespace fwp::cpu {

// param, grad, m, v: [n]; param, m and v are updated in place.
void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWParams& p);

// Σ x_i² in double (for the global gradient norm).
double SumSquares(const float* x, int64_t n);

}  // namespace fwp::cpu
