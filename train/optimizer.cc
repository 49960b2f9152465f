#include "train/optimizer.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "model/safetensors.h"

namespace fwp {

float LearningRate(const OptimizerConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step <= c.warmup_steps) {
    return c.lr * static_cast<float>(step) / static_cast<float>(c.warmup_steps);
  }
  const int64_t decay_steps = std::max<int64_t>(1, c.total_steps - c.warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - c.warmup_steps) / static_cast<double>(decay_steps));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(c.lr * (c.min_lr_ratio + (1.0 - c.min_lr_ratio) * cosine));
}

absl::StatusOr<std::unique_ptr<Optimizer>> Optimizer::Create(Model& model,
                                                             const OptimizerConfig& config) {
  std::unique_ptr<Optimizer> opt(new Optimizer(model, config));
  opt->params_ = model.Parameters();
  Backend& backend = model.backend();
  for (const auto& p : opt->params_) {
    for (auto* list : {&opt->grads_, &opt->m_, &opt->v_}) {
      FWP_ASSIGN_OR_RETURN(Buffer b, Buffer::Allocate(backend, p.size * sizeof(float)));
      backend.Zero(b.data(), b.bytes());
      list->push_back(std::move(b));
    }
  }
  return opt;
}

void Optimizer::ZeroGrads() {
  for (Buffer& g : grads_) model_.backend().Zero(g.data(), g.bytes());
}

double Optimizer::Step() {
  Backend& backend = model_.backend();
  double sum = 0.0;
  for (size_t i = 0; i < params_.size(); ++i) sum += backend.SumSquares(grads_[i].f32(), params_[i].size);
  const double norm = std::sqrt(sum);
  // Clipped, it would scale by clip/inf = 0, and inf · 0 is NaN in every weight.
  if (!std::isfinite(norm)) return norm;
  ++step_;
  AdamWParams p;
  p.lr = LearningRate(config_, step_);
  p.beta1 = config_.beta1;
  p.beta2 = config_.beta2;
  p.eps = config_.eps;
  p.step = step_;
  p.grad_scale = (config_.clip_norm > 0 && norm > config_.clip_norm)
                     ? static_cast<float>(config_.clip_norm / norm)
                     : 1.0f;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].name;
    const bool matrix = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
                        name.find("norm") == std::string::npos;
    p.weight_decay = matrix ? config_.weight_decay : 0.0f;
    backend.AdamW(params_[i].data, grads_[i].f32(), m_[i].f32(), v_[i].f32(), params_[i].size, p);
  }
  return norm;
}

absl::Status Optimizer::Save(const std::string& path) const {
  Backend& backend = model_.backend();
  std::vector<std::vector<float>> host;
  std::vector<TensorToWrite> tensors;
  host.reserve(2 * params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const auto& [prefix, buffers] : {std::pair{"m.", &m_}, std::pair{"v.", &v_}}) {
      host.emplace_back(params_[i].size);
      backend.CopyToHost(host.back().data(), (*buffers)[i].data(), params_[i].size * sizeof(float));
      tensors.push_back({prefix + params_[i].name, DType::kF32, {params_[i].size},
                         {reinterpret_cast<const uint8_t*>(host.back().data()),
                          host.back().size() * sizeof(float)}});
    }
  }
  return WriteSafetensors(path, tensors, {{"step", absl::StrCat(step_)}});
}

absl::Status Optimizer::Load(const std::string& path) {
  FWP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  auto it = file->metadata().find("step");
  int64_t step = 0;
  if (it == file->metadata().end() || !absl::SimpleAtoi(it->second, &step) || step < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no valid 'step' in the metadata"));
  }
  Backend& backend = model_.backend();
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const auto& [prefix, buffers] : {std::pair{"m.", &m_}, std::pair{"v.", &v_}}) {
      const std::string name = prefix + params_[i].name;
      const TensorInfo* info = file->Find(name);
      if (info == nullptr || info->NumElements() != params_[i].size) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": optimiser state for '", name, "' is missing or misshapen"));
      }
      FWP_ASSIGN_OR_RETURN(std::vector<float> data, file->ReadF32(name));
      backend.CopyToDevice((*buffers)[i].data(), data.data(), data.size() * sizeof(float));
    }
  }
  step_ = step;
  return absl::OkStatus();
}

}  // namespace fwp
