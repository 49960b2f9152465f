#include "model/model_dir.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "model/atomic_file.h"
#include "model/safetensors.h"

namespace fwp {

absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir, Backend& backend) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  LoadedModel loaded;
  FWP_ASSIGN_OR_RETURN(loaded.config, Config::FromFile(dir + "/config.json"));
  FWP_ASSIGN_OR_RETURN(loaded.tokenizer, Tokenizer::Load(dir + "/tokenizer.model"));
  if (loaded.tokenizer->vocab_size() > loaded.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": tokenizer.model has ", loaded.tokenizer->vocab_size(),
        " pieces but config.json's vocab_size is ", loaded.config.vocab_size));
  }
  FWP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir + "/model.safetensors"));
  FWP_ASSIGN_OR_RETURN(HostWeights weights, ReadWeights(*file, loaded.config));
  FWP_ASSIGN_OR_RETURN(loaded.model, Model::Create(backend, loaded.config, weights));
  return loaded;
}

absl::StatusOr<HostModel> ReadHostModel(const std::string& dir) {
  if (!std::filesystem::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  HostModel host;
  FWP_ASSIGN_OR_RETURN(host.config, Config::FromFile(dir + "/config.json"));
  FWP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir + "/model.safetensors"));
  FWP_ASSIGN_OR_RETURN(host.weights, ReadWeights(*file, host.config));
  host.metadata = file->metadata();
  return host;
}

absl::Status WriteModelDir(const std::string& dir, const Config& config,
                           const HostWeights& weights,
                           const std::string& tokenizer_path,
                           const std::map<std::string, std::string>& weights_metadata) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  FWP_RETURN_IF_ERROR(WriteFileAtomically(dir + "/config.json", config.ToJson()));
  FWP_RETURN_IF_ERROR(WriteWeights(dir + "/model.safetensors", config, weights, weights_metadata));
  if (!tokenizer_path.empty()) {
    FWP_ASSIGN_OR_RETURN(const std::string bytes, ReadWholeFile(tokenizer_path));
    FWP_RETURN_IF_ERROR(WriteFileAtomically(dir + "/tokenizer.model", bytes));
  }
  return absl::OkStatus();
}

}  // namespace fwp
