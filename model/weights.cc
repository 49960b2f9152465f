#include "model/weights.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/random.h"

namespace fwp {

std::vector<TensorSpec> ExpectedTensors(const Config& c) {
  const FastWeightSpec attn = c.Attention();
  const int64_t D = c.d_model;
  std::vector<TensorSpec> specs;
  specs.push_back({"embed.weight", {c.vocab_size, D}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    specs.push_back({p + "attn_norm.weight", {D}});
    specs.push_back({p + "attn_norm.bias", {D}});
    specs.push_back({p + (c.update == UpdateRule::kDelta ? "attn.qkvb.weight"
                                                         : "attn.qkv.weight"),
                     {attn.RowWidth(), D}});
    specs.push_back({p + "attn.out.weight", {D, c.n_heads * c.d_head}});
    if (c.feature_map.kind == FeatureMapKind::kFavor) {
      specs.push_back({p + "attn.favor_proj", {c.feature_map.favor_features, c.d_head}});
    }
    specs.push_back({p + "ffn_norm.weight", {D}});
    specs.push_back({p + "ffn_norm.bias", {D}});
    specs.push_back({p + "ffn.up.weight", {c.d_ff, D}});
    specs.push_back({p + "ffn.up.bias", {c.d_ff}});
    specs.push_back({p + "ffn.down.weight", {D, c.d_ff}});
    specs.push_back({p + "ffn.down.bias", {D}});
  }
  specs.push_back({"final_norm.weight", {D}});
  specs.push_back({"final_norm.bias", {D}});
  if (!c.tied_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, D}});
  return specs;
}

absl::StatusOr<HostWeights> ReadWeights(const SafetensorsFile& file,
                                        const Config& config) {
  HostWeights weights;
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    const TensorInfo* info = file.Find(spec.name);
    if (info == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": missing tensor '", spec.name, "' (shape [",
          absl::StrJoin(spec.shape, ", "), "]) that the config requires"));
    }
    if (info->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": tensor '", spec.name, "' has shape [",
          absl::StrJoin(info->shape, ", "), "] but the config requires [",
          absl::StrJoin(spec.shape, ", "), "]"));
    }
    auto data = file.ReadF32(spec.name);
    if (!data.ok()) return data.status();
    weights[spec.name] = std::move(*data);
  }
  for (const auto& [name, info] : file.tensors()) {
    if (!weights.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": unexpected tensor '", name,
          "' that this config does not use"));
    }
  }
  return weights;
}

absl::Status WriteWeights(const std::string& path, const Config& config,
                          const HostWeights& weights,
                          const std::map<std::string, std::string>& metadata) {
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    auto it = weights.find(spec.name);
    if (it == weights.end()) {
      return absl::InvalidArgumentError(absl::StrCat("no weights for '", spec.name, "'"));
    }
    const auto& v = it->second;
    tensors.push_back({spec.name, DType::kF32, spec.shape,
                       absl::Span<const uint8_t>(
                           reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4)});
  }
  std::map<std::string, std::string> all = metadata;
  all["format"] = "fwp";
  return WriteSafetensors(path, tensors, all);
}

std::vector<float> OrthogonalRandomFeatures(int64_t m, int64_t d, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> omega(m * d);
  for (int64_t block = 0; block * d < m; ++block) {
    std::vector<double> rows(d * d);
    for (double& x : rows) x = rng.Normal();
    for (int64_t i = 0; i < d; ++i) {  // modified Gram-Schmidt
      double* ri = &rows[i * d];
      for (int64_t j = 0; j < i; ++j) {
        const double* rj = &rows[j * d];
        double dot = 0.0;
        for (int64_t k = 0; k < d; ++k) dot += ri[k] * rj[k];
        for (int64_t k = 0; k < d; ++k) ri[k] -= dot * rj[k];
      }
      double norm = 0.0;
      for (int64_t k = 0; k < d; ++k) norm += ri[k] * ri[k];
      norm = std::sqrt(norm);
      for (int64_t k = 0; k < d; ++k) ri[k] /= norm;
    }
    for (int64_t i = 0; i < d && block * d + i < m; ++i) {
      double chi = 0.0;  // the norm of a Gaussian vector
      for (int64_t k = 0; k < d; ++k) {
        double g = rng.Normal();
        chi += g * g;
      }
      chi = std::sqrt(chi);
      for (int64_t k = 0; k < d; ++k) {
        omega[(block * d + i) * d + k] = static_cast<float>(rows[i * d + k] * chi);
      }
    }
  }
  return omega;
}

HostWeights RandomWeights(const Config& config, uint64_t seed, float init_std) {
  Rng rng(seed);
  HostWeights weights;
  const float out_std = init_std / std::sqrt(2.0f * static_cast<float>(config.n_layers));
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    std::vector<float> v(n, 0.0f);
    const std::string& name = spec.name;
    auto ends_with = [&](std::string_view suffix) {
      return name.size() >= suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("favor_proj")) {
      const int64_t layer = std::stoll(name.substr(7));  // "layers.<l>."
      v = OrthogonalRandomFeatures(spec.shape[0], spec.shape[1],
                                   config.favor_seed * 1000003ull + layer);
    } else if (ends_with("norm.weight")) {
      std::fill(v.begin(), v.end(), 1.0f);
    } else if (ends_with(".bias")) {
      // zeros
    } else {
      const bool output = ends_with("attn.out.weight") || ends_with("ffn.down.weight");
      const double std = output ? out_std : init_std;
      for (float& x : v) x = static_cast<float>(rng.Normal() * std);
    }
    weights[name] = std::move(v);
  }
  return weights;
}

}  // namespace fwp
