// Config: every hyper-parameter of an FWP language model (config.json).
//
// Parsing is strict: an unknown field, a wrong type, an out-of-range value or
// an inconsistent combination is refused with a message naming the field, so
// a typo never silently becomes a default. Example:
//
//   {"vocab_size": 8192, "d_model": 256, "n_layers": 4, "n_heads": 4,
//    "d_head": 64, "d_ff": 1024, "update": "delta",
//    "feature_map": {"kind": "dpfp", "nu": 1}, "sum_norm": true,
//    "attention_normalizer": false, "positions": "none",
//    "tied_embeddings": true, "activation": "relu", "norm_eps": 1e-5}
//
// sum_norm defaults to true, except for identity (signed features). feature_map kinds: {"kind": "dpfp", "nu": ν}, {"kind": "elu1"},
// {"kind": "favor", "features": m, "seed": s}, {"kind": "relu"},
// {"kind": "identity"}; a bare string "elu1" is the same as {"kind": "elu1"}.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/activation.h"
#include "kernels/fast_weight.h"
#include "kernels/feature_map.h"

namespace fwp {

enum class Positions { kNone, kSinusoidal };

struct Config {
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t d_head = 0;
  int64_t d_ff = 0;
  UpdateRule update = UpdateRule::kDelta;
  FeatureMapSpec feature_map;  // includes sum_norm
  uint64_t favor_seed = 0;     // favor: seed of the random projection
  bool attention_normalizer = false;
  Positions positions = Positions::kNone;
  bool tied_embeddings = true;
  Activation activation = Activation::kRelu;
  float norm_eps = 1e-5f;

  // The fast-weight memory of one layer.
  FastWeightSpec Attention() const;
  // Parameters counted once (a tied output matrix is the embedding).
  int64_t ParameterCount() const;

  // Checks ranges and combinations; parsing calls it.
  absl::Status Validate() const;

  static absl::StatusOr<Config> FromJson(const std::string& text);
  static absl::StatusOr<Config> FromFile(const std::string& path);
  // The file's config with `settings` written over it before it is checked,
  // each "field=value" (fwp-train's and fwp-run's --set): "n_layers=8",
  // "update=sum", "feature_map.nu=2". A value that parses as JSON is taken
  // as JSON (8, true, 1e-5, "sum"), any other as a string (sum); a field is
  // added if the file lacks it. A bare name for feature_map replaces the
  // whole map ("feature_map=elu1" drops dpfp's "nu"). The result is checked
  // as any config.json is, so an unknown or misspelt field is refused.
  static absl::StatusOr<Config> FromFile(const std::string& path,
                                         absl::Span<const std::string> settings);
  std::string ToJson() const;  // parses back to an equal Config
};

}  // namespace fwp
