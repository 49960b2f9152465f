#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status_macros.h"
#include "nlohmann/json.hpp"

namespace fwp {
namespace {

using nlohmann::json;

// Reads fields of one JSON object by name, remembering which were read so
// that whatever is left over is reported as unknown.
class FieldReader {
 public:
  FieldReader(const json& object, std::string prefix)
      : object_(object), prefix_(std::move(prefix)) {}

  std::string Name(const std::string& key) const { return prefix_ + key; }

  bool Has(const std::string& key) const { return object_.contains(key); }

  // The value of a field that is parsed elsewhere (a nested object).
  const json& Take(const std::string& key) {
    seen_.insert(key);
    return object_.at(key);
  }

  absl::Status Int(const std::string& key, bool required, int64_t* out) {
    if (!Has(key)) return Missing(key, required);
    seen_.insert(key);
    const json& v = object_.at(key);
    if (!v.is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field '", Name(key), "' must be an integer, got ",
                       v.dump()));
    }
    *out = v.get<int64_t>();
    return absl::OkStatus();
  }

  absl::Status Bool(const std::string& key, bool* out) {
    if (!Has(key)) return absl::OkStatus();
    seen_.insert(key);
    const json& v = object_.at(key);
    if (!v.is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config field '", Name(key), "' must be true or false, got ", v.dump()));
    }
    *out = v.get<bool>();
    return absl::OkStatus();
  }

  absl::Status Float(const std::string& key, float* out) {
    if (!Has(key)) return absl::OkStatus();
    seen_.insert(key);
    const json& v = object_.at(key);
    if (!v.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config field '", Name(key), "' must be a number, got ", v.dump()));
    }
    *out = v.get<float>();
    return absl::OkStatus();
  }

  // A string that must be one of `choices`; *index is its position.
  absl::Status Enum(const std::string& key, bool required,
                    const std::vector<std::string>& choices, int* index) {
    if (!Has(key)) return Missing(key, required);
    seen_.insert(key);
    const json& v = object_.at(key);
    if (v.is_string()) {
      for (size_t i = 0; i < choices.size(); ++i) {
        if (v.get<std::string>() == choices[i]) {
          *index = static_cast<int>(i);
          return absl::OkStatus();
        }
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", Name(key), "' must be one of \"",
                     absl::StrJoin(choices, "\", \""), "\", got ", v.dump()));
  }

  // Refuses any field that was not read.
  absl::Status NoOthers() const {
    for (const auto& [key, value] : object_.items()) {
      if (!seen_.count(key)) return Unknown(key, seen_);
    }
    return absl::OkStatus();
  }

  // Refuses any field not in `known`, before anything is read, so that a
  // misspelt field is reported as such rather than as a missing one.
  absl::Status OnlyKnown(const std::set<std::string>& known) const {
    for (const auto& [key, value] : object_.items()) {
      if (!known.count(key)) return Unknown(key, known);
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Missing(const std::string& key, bool required) const {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", Name(key), "' is required"));
  }

  absl::Status Unknown(const std::string& key, const std::set<std::string>& known) const {
    std::string hint;
    size_t best = 3;  // suggest a known name within two edits
    for (const std::string& candidate : known) {
      const size_t d = EditDistance(key, candidate);
      if (d < best) {
        best = d;
        hint = absl::StrCat(" (did you mean '", Name(candidate), "'?)");
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown config field '", Name(key), "'", hint));
  }

  static size_t EditDistance(const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
        diagonal = up;
      }
    }
    return row[b.size()];
  }

  const json& object_;
  std::string prefix_;
  std::set<std::string> seen_;
};

const std::vector<std::string> kUpdates = {"delta", "sum"};
const std::vector<std::string> kFeatureMaps = {"dpfp", "elu1", "favor", "relu",
                                               "identity"};
const std::vector<std::string> kPositions = {"none", "sinusoidal"};
const std::vector<std::string> kActivations = {"relu", "gelu"};

absl::Status ParseFeatureMap(const json& v, Config& c) {
  json object = v.is_string() ? json{{"kind", v}} : v;
  if (!object.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field 'feature_map' must be a string or an object, got ",
        v.dump()));
  }
  FieldReader r(object, "feature_map.");
  int kind = 0;
  FWP_RETURN_IF_ERROR(r.Enum("kind", true, kFeatureMaps, &kind));
  c.feature_map.kind = static_cast<FeatureMapKind>(kind);
  if (c.feature_map.kind == FeatureMapKind::kDpfp) {
    int64_t nu = 1;
    FWP_RETURN_IF_ERROR(r.Int("nu", false, &nu));
    if (nu < 1 || nu > 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field 'feature_map.nu' must be in [1, 16], got ", nu));
    }
    c.feature_map.nu = static_cast<int>(nu);
  }
  if (c.feature_map.kind == FeatureMapKind::kFavor) {
    int64_t m = 0;
    FWP_RETURN_IF_ERROR(r.Int("features", true, &m));
    if (m < 1 || m > 65536) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config field 'feature_map.features' must be in [1, 65536], got ", m));
    }
    c.feature_map.favor_features = static_cast<int>(m);
    int64_t seed = 0;
    FWP_RETURN_IF_ERROR(r.Int("seed", false, &seed));
    c.favor_seed = static_cast<uint64_t>(seed);
  }
  // Fields of another kind (e.g. "nu" with elu1) are unknown here.
  return r.NoOthers();
}

absl::Status Positive(const char* name, int64_t value, int64_t max) {
  if (value < 1 || value > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field '", name, "' must be in [1, ", max, "], got ", value));
  }
  return absl::OkStatus();
}

// Writes each "a.b=value" of `settings` into `root` (Config::FromFile).
absl::Status ApplySettings(absl::Span<const std::string> settings, json& root) {
  for (const std::string& setting : settings) {
    const size_t equals = setting.find('=');
    if (equals == 0 || equals == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--set '", setting, "' is not field=value (e.g. n_layers=8)"));
    }
    const std::string path = setting.substr(0, equals), text = setting.substr(equals + 1);
    json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) value = text;
    json* node = &root;
    for (size_t begin = 0;;) {
      const size_t dot = path.find('.', begin);
      const std::string key = path.substr(begin, dot - begin);
      if (key.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--set '", setting, "': '", path, "' has an empty field name"));
      }
      if (dot == std::string::npos) {
        (*node)[key] = std::move(value);
        break;
      }
      json& child = (*node)[key];
      // The one field with a shorthand: "elu1" is {"kind": "elu1"}.
      if (node == &root && key == "feature_map" && child.is_string()) {
        child = json{{"kind", child}};
      }
      if (!child.is_object() && !child.is_null()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--set '", setting, "': '", path.substr(0, dot), "' is ", child.dump(),
            ", not an object with fields"));
      }
      node = &child;
      begin = dot + 1;
    }
  }
  return absl::OkStatus();
}

}  // namespace

FastWeightSpec Config::Attention() const {
  FastWeightSpec spec;
  spec.update = update;
  spec.phi = feature_map;
  spec.attention_normalizer = attention_normalizer;
  spec.heads = n_heads;
  spec.d_head = d_head;
  return spec;
}

int64_t Config::ParameterCount() const {
  const FastWeightSpec a = Attention();
  int64_t per_layer = 2 * 2 * d_model                      // two LayerNorms
                      + a.RowWidth() * d_model             // W_qkvβ
                      + d_model * n_heads * d_head         // W_o
                      + d_ff * d_model + d_ff              // FFN up
                      + d_model * d_ff + d_model;          // FFN down
  int64_t total = vocab_size * d_model + n_layers * per_layer + 2 * d_model;
  if (!tied_embeddings) total += vocab_size * d_model;
  return total;
}

absl::Status Config::Validate() const {
  FWP_RETURN_IF_ERROR(Positive("vocab_size", vocab_size, int64_t{1} << 24));
  FWP_RETURN_IF_ERROR(Positive("d_model", d_model, 65536));
  FWP_RETURN_IF_ERROR(Positive("n_layers", n_layers, 1024));
  FWP_RETURN_IF_ERROR(Positive("n_heads", n_heads, 1024));
  FWP_RETURN_IF_ERROR(Positive("d_head", d_head, 4096));
  FWP_RETURN_IF_ERROR(Positive("d_ff", d_ff, 1 << 20));
  if (positions == Positions::kSinusoidal && d_model % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field 'positions': sinusoidal positions need an even d_model, got ",
        d_model));
  }
  if (feature_map.sum_norm && !feature_map.NonNegative()) {
    return absl::InvalidArgumentError(
        "config field 'sum_norm': the identity feature map gives signed features, "
        "whose sum can be zero; set \"sum_norm\": false");
  }
  if (attention_normalizer && update != UpdateRule::kSum) {
    return absl::InvalidArgumentError(
        "config field 'attention_normalizer' applies only to \"update\": \"sum\"");
  }
  if (attention_normalizer && !feature_map.NonNegative()) {
    return absl::InvalidArgumentError(
        "config field 'attention_normalizer' needs a non-negative feature map, "
        "not identity");
  }
  if (!(norm_eps > 0.0f) || !std::isfinite(norm_eps)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field 'norm_eps' must be a positive number, got ", norm_eps));
  }
  // Each field has its own bound, but their product can still ask for
  // terabytes; refuse here rather than in bad_alloc at the first allocation.
  constexpr int64_t kMaxParameters = int64_t{1} << 34;
  if (ParameterCount() > kMaxParameters) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config has ", ParameterCount(), " parameters, more than the 2^34 fwp takes: "
        "lower vocab_size, d_model, n_layers or d_ff"));
  }
  // A session's state, [layers, heads, d_φ, d_head] floats (and z): the
  // unit of the server's state pool, which multiplies it by its slots.
  const FastWeightSpec a = Attention();
  const double state_bytes = 4.0 * n_layers * a.heads * static_cast<double>(a.DPhi()) *
                             static_cast<double>(a.d_head + 1);
  constexpr double kMaxStateBytes = double{int64_t{1} << 34};
  if (state_bytes > kMaxStateBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config's fast-weight state is ", state_bytes / (1 << 30),
        " GiB a session, more than the 16 GiB fwp takes: lower n_layers, n_heads, d_head or "
        "the feature map's size"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Config> Config::FromJson(const std::string& text) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
    return absl::InvalidArgumentError(
        absl::StrCat("config is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError("config must be a JSON object");
  }
  Config c;
  FieldReader r(root, "");
  FWP_RETURN_IF_ERROR(r.OnlyKnown(
      {"vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_ff", "update",
       "feature_map", "sum_norm", "attention_normalizer", "positions", "tied_embeddings",
       "activation", "norm_eps"}));
  FWP_RETURN_IF_ERROR(r.Int("vocab_size", true, &c.vocab_size));
  FWP_RETURN_IF_ERROR(r.Int("d_model", true, &c.d_model));
  FWP_RETURN_IF_ERROR(r.Int("n_layers", true, &c.n_layers));
  FWP_RETURN_IF_ERROR(r.Int("n_heads", true, &c.n_heads));
  FWP_RETURN_IF_ERROR(r.Int("d_head", true, &c.d_head));
  FWP_RETURN_IF_ERROR(r.Int("d_ff", true, &c.d_ff));
  int index = 0;
  FWP_RETURN_IF_ERROR(r.Enum("update", true, kUpdates, &index));
  c.update = static_cast<UpdateRule>(index);
  if (!r.Has("feature_map")) {
    return absl::InvalidArgumentError("config field 'feature_map' is required");
  }
  FWP_RETURN_IF_ERROR(ParseFeatureMap(r.Take("feature_map"), c));
  // Default: normalise every non-negative map; identity is never normalised.
  c.feature_map.sum_norm = c.feature_map.NonNegative();
  FWP_RETURN_IF_ERROR(r.Bool("sum_norm", &c.feature_map.sum_norm));
  FWP_RETURN_IF_ERROR(r.Bool("attention_normalizer", &c.attention_normalizer));
  index = 0;
  FWP_RETURN_IF_ERROR(r.Enum("positions", false, kPositions, &index));
  c.positions = static_cast<Positions>(index);
  FWP_RETURN_IF_ERROR(r.Bool("tied_embeddings", &c.tied_embeddings));
  index = 0;
  FWP_RETURN_IF_ERROR(r.Enum("activation", false, kActivations, &index));
  c.activation = static_cast<Activation>(index);
  FWP_RETURN_IF_ERROR(r.Float("norm_eps", &c.norm_eps));
  FWP_RETURN_IF_ERROR(r.NoOthers());
  FWP_RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<Config> Config::FromFile(const std::string& path) {
  return FromFile(path, {});
}

absl::StatusOr<Config> Config::FromFile(const std::string& path,
                                        absl::Span<const std::string> settings) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open config ", path));
  std::stringstream text;
  text << in.rdbuf();
  std::string where = path;
  json root = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  absl::StatusOr<Config> config;
  if (settings.empty() || !root.is_object()) {
    config = FromJson(text.str());  // its own message for text that is no JSON object
  } else {
    // The settings go into the JSON, so that FromJson's checks (and its
    // messages) judge the result: a file may lack a field --set gives.
    where = absl::StrCat(path, " with --set ", absl::StrJoin(settings, ","));
    absl::Status applied = ApplySettings(settings, root);
    config = applied.ok() ? FromJson(root.dump()) : absl::StatusOr<Config>(applied);
  }
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(where, ": ", config.status().message()));
  }
  return config;
}

std::string Config::ToJson() const {
  json phi = {{"kind", std::string(FeatureMapName(feature_map.kind))}};
  if (feature_map.kind == FeatureMapKind::kDpfp) phi["nu"] = feature_map.nu;
  if (feature_map.kind == FeatureMapKind::kFavor) {
    phi["features"] = feature_map.favor_features;
    phi["seed"] = favor_seed;
  }
  json j = {
      {"vocab_size", vocab_size},
      {"d_model", d_model},
      {"n_layers", n_layers},
      {"n_heads", n_heads},
      {"d_head", d_head},
      {"d_ff", d_ff},
      {"update", std::string(UpdateRuleName(update))},
      {"feature_map", phi},
      {"sum_norm", feature_map.sum_norm},
      {"attention_normalizer", attention_normalizer},
      {"positions", positions == Positions::kNone ? "none" : "sinusoidal"},
      {"tied_embeddings", tied_embeddings},
      {"activation", std::string(ActivationName(activation))},
      {"norm_eps", norm_eps},
  };
  return j.dump(2) + "\n";
}

}  // namespace fwp
