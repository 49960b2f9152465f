// A model directory: config.json + model.safetensors + tokenizer.model, loaded
// and checked as one unit (the tokenizer must fit the model's vocabulary).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace fwp {

struct LoadedModel {
  Config config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Model> model;
};

absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir, Backend& backend);

// The config and float32 weights of a model directory, on the host (the
// trainer's start: a checkpoint to resume, a model to fine-tune); the
// tokenizer is not read.
struct HostModel {
  Config config;
  HostWeights weights;
  std::map<std::string, std::string> metadata;  // model.safetensors' (a checkpoint's "step")
};
absl::StatusOr<HostModel> ReadHostModel(const std::string& dir);

// Writes config.json and model.safetensors into `dir` (created if needed), and
// copies `tokenizer_path` to tokenizer.model when it is not empty.
absl::Status WriteModelDir(const std::string& dir, const Config& config,
                           const HostWeights& weights,
                           const std::string& tokenizer_path,
                           const std::map<std::string, std::string>& weights_metadata = {});

}  // namespace fwp
