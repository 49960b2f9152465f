// Softmax cross-entropy, fused forward and backward (as llm.c's classifier):
//   loss_i = logsumexp(logits_i) − logits_i[target_i]
//   dlogits_i = (softmax(logits_i) − onehot(target_i)) · dloss
// Rows whose target is negative are ignored: loss 0 and zero gradient.
// Stable: the row maximum is subtracted before exponentiating, and the sum
// accumulates in double.
#pragma once

#include <cstdint>

namespace fwp::cpu {

// logits: [rows, vocab]; targets: [rows]; losses: [rows]; dlogits: [rows,
// vocab] or null (forward only), may alias logits. dloss: ∂L/∂loss_i, the
// same for every row (e.g. 1 / number of counted rows for a mean).
void SoftmaxCrossEntropy(const float* logits, const int32_t* targets, int64_t rows,
                         int64_t vocab, float* losses, float* dlogits, float dloss);

}  // namespace fwp::cpu
