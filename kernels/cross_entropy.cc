#include "kernels/cross_entropy.h"

#include <cmath>

#include "kernels/thread_pool.h"

namespace fwp::cpu {

void SoftmaxCrossEntropy(const float* logits, const int32_t* targets, int64_t rows,
                         int64_t vocab, float* losses, float* dlogits, float dloss) {
  // Rows are independent: one task each. exp(x − max) is computed once per
  // element; with a gradient it is kept in dx (which may alias the logits:
  // each element is read before it is overwritten) for the second pass.
  CpuThreadPool().ParallelFor(rows, [&](int64_t r) {
    const float* x = logits + r * vocab;
    float* dx = dlogits ? dlogits + r * vocab : nullptr;
    const int32_t target = targets[r];
    if (target < 0) {
      losses[r] = 0.0f;
      if (dx) {
        for (int64_t j = 0; j < vocab; ++j) dx[j] = 0.0f;
      }
      return;
    }
    float max = x[0];
    for (int64_t j = 1; j < vocab; ++j) max = x[j] > max ? x[j] : max;
    const float target_logit = x[target];
    double sum = 0.0;  // float exponentials (as the GPU's), summed in double
    for (int64_t j = 0; j < vocab; ++j) {
      const float e = std::exp(x[j] - max);
      sum += e;
      if (dx) dx[j] = e;
    }
    losses[r] = static_cast<float>(std::log(sum) - (target_logit - max));
    if (dx) {
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < vocab; ++j) dx[j] = dx[j] * inv * dloss;
      dx[target] -= dloss;
    }
  });
}

}  // namespace fwp::cpu
