#include "kernels/cross_entropy.h"

#include <cmath>

namespace fwp::cpu {

void SoftmaxCrossEntropy(const float* logits, const int32_t* targets, int64_t rows,
                         int64_t vocab, float* losses, float* dlogits, float dloss) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * vocab;
    float* dx = dlogits ? dlogits + r * vocab : nullptr;
    const int32_t target = targets[r];
    if (target < 0) {
      losses[r] = 0.0f;
      if (dx) {
        for (int64_t j = 0; j < vocab; ++j) dx[j] = 0.0f;
      }
      continue;
    }
    float max = x[0];
    for (int64_t j = 1; j < vocab; ++j) max = x[j] > max ? x[j] : max;
    double sum = 0.0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(x[j] - max));
    const double log_sum = std::log(sum);
    const float target_logit = x[target];
    losses[r] = static_cast<float>(log_sum - (target_logit - max));
    if (dx) {
      const double inv = 1.0 / sum;
      for (int64_t j = 0; j < vocab; ++j) {
        const double p = std::exp(static_cast<double>(x[j] - max)) * inv;
        dx[j] = static_cast<float>((p - (j == target ? 1.0 : 0.0)) * dloss);
      }
    }
  }
}

}  // namespace fwp::cpu
