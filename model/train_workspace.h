// Internal to model/: the training form's saved activations and scratch.
#pragma once

#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "model/model.h"
#include "model/state.h"

namespace fwp {

// Saved activations and gradient scratch for one (batch, time) shape.
struct Model::TrainWorkspace {
  int64_t batch = 0, time = 0;
  // Per layer, [n = batch·time rows]:
  std::vector<Buffer> x_in;    // [n, D]  the layer's input (residual stream)
  std::vector<Buffer> xn1;     // [n, D]  LN1(x_in)
  std::vector<Buffer> qkvb;    // [n, RW] fused projection
  std::vector<Buffer> y;       // [n, HD] memory read-out
  std::vector<Buffer> h;       // [n, D]  x_in + W_o y
  std::vector<Buffer> xn2;     // [n, D]  LN2(h)
  std::vector<Buffer> ff_pre;  // [n, F]  W_up xn2 + b_up
  std::vector<Buffer> ff_act;  // [n, F]  act(ff_pre)
  Buffer x_final;              // [n, D]  the last layer's output
  Buffer xn_final;             // [n, D]  final LN
  Buffer logits;               // [n, V]  then ∂L/∂logits in place
  Buffer losses;               // [n]
  Buffer dx, dxn, dy, dqkvb, dff;  // gradients
  Buffer tokens, targets, positions, slots;
  std::unique_ptr<StatePool> initial;  // empty states (S₀ = 0), never written
  std::unique_ptr<StatePool> work;     // states the forward advances
};

}  // namespace fwp
