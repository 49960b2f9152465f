// The optimiser of fwp-train: AdamW (decoupled weight decay) on float32
// master weights, global gradient-norm clipping, and a learning rate that
// warms up linearly and then decays on a cosine to min_lr_ratio · lr.
// Weight decay applies to matrices (".weight" tensors other than norms).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/model.h"

namespace fwp {

struct OptimizerConfig {
  float lr = 1e-3f;
  float min_lr_ratio = 0.1f;
  int64_t warmup_steps = 100;
  int64_t total_steps = 1000;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  float clip_norm = 1.0f;  // ≤ 0: no clipping
};

// The learning rate of update `step` (1-based).
float LearningRate(const OptimizerConfig& config, int64_t step);

class Optimizer {
 public:
  // Moments and gradient buffers for every parameter of `model`, zeroed.
  static absl::StatusOr<std::unique_ptr<Optimizer>> Create(Model& model,
                                                           const OptimizerConfig& config);

  // One gradient buffer per model.Parameters() entry, for ForwardBackward.
  std::vector<Buffer>& grads() { return grads_; }
  void ZeroGrads();

  // Clips the summed gradients to clip_norm and applies one update; returns
  // the gradient norm before clipping. Does not zero the gradients. A norm
  // that is not finite (a gradient overflowed) changes nothing — the weights,
  // moments and step stay as they were — and is returned as it is.
  double Step();

  int64_t step() const { return step_; }
  const OptimizerConfig& config() const { return config_; }

  // The moments and the step count, as safetensors (m.<name>, v.<name>).
  absl::Status Save(const std::string& path) const;
  absl::Status Load(const std::string& path);

 private:
  Optimizer(Model& model, const OptimizerConfig& config) : model_(model), config_(config) {}

  Model& model_;
  OptimizerConfig config_;
  std::vector<Model::Parameter> params_;
  std::vector<Buffer> grads_, m_, v_;
  int64_t step_ = 0;
};

}  // namespace fwp
