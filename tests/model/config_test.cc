#include "model/config.h"

#include <gtest/gtest.h>

#include <fstream>

#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"

namespace fwp {
namespace {

const char* kExample = R"({
  "vocab_size": 8192, "d_model": 256, "n_layers": 4, "n_heads": 4,
  "d_head": 64, "d_ff": 1024, "update": "delta",
  "feature_map": {"kind": "dpfp", "nu": 2}, "sum_norm": true,
  "attention_normalizer": false, "positions": "sinusoidal",
  "tied_embeddings": false, "activation": "gelu", "norm_eps": 1e-6})";

// The error of parsing kExample with one field's text replaced.
std::string ErrorWith(const std::string& from, const std::string& to) {
  auto config = Config::FromJson(absl::StrReplaceAll(kExample, {{from, to}}));
  EXPECT_FALSE(config.ok()) << "accepted " << to;
  return std::string(config.status().message());
}

TEST(Config, ParsesEveryFieldAndRoundTrips) {
  auto config = Config::FromJson(kExample);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 8192);
  EXPECT_EQ(config->n_layers, 4);
  EXPECT_EQ(config->feature_map.kind, FeatureMapKind::kDpfp);
  EXPECT_EQ(config->feature_map.nu, 2);
  EXPECT_EQ(config->positions, Positions::kSinusoidal);
  EXPECT_FALSE(config->tied_embeddings);
  EXPECT_EQ(config->activation, Activation::kGelu);
  EXPECT_FLOAT_EQ(config->norm_eps, 1e-6f);
  EXPECT_EQ(config->Attention().DPhi(), 2 * 64 * 2);
  auto again = Config::FromJson(config->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ToJson(), config->ToJson());
}

TEST(Config, FavorAndShorthandFeatureMaps) {
  auto favor = Config::FromJson(absl::StrReplaceAll(
      kExample, {{R"({"kind": "dpfp", "nu": 2})", R"({"kind": "favor", "features": 32, "seed": 9})"}}));
  ASSERT_TRUE(favor.ok()) << favor.status();
  EXPECT_EQ(favor->Attention().DPhi(), 64);
  EXPECT_EQ(favor->favor_seed, 9u);
  auto elu = Config::FromJson(absl::StrReplaceAll(
      kExample, {{R"({"kind": "dpfp", "nu": 2})", R"("elu1")"}}));
  ASSERT_TRUE(elu.ok()) << elu.status();
  EXPECT_EQ(elu->feature_map.kind, FeatureMapKind::kElu1);
}

TEST(Config, IdentityFeaturesAreNotSumNormalisedByDefault) {
  const std::string text = absl::StrReplaceAll(
      kExample, {{R"({"kind": "dpfp", "nu": 2})", R"("identity")"}, {R"("sum_norm": true,)", ""}});
  auto config = Config::FromJson(text);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->feature_map.sum_norm);
}

// fwp-train's and fwp-run's --set: fields written over the file's before
// the result is checked.
TEST(Config, SettingsOverrideTheFilesFields) {
  const std::string path = ::testing::TempDir() + "fwp_config_settings.json";
  std::ofstream(path) << kExample;
  auto config = Config::FromFile(
      path, {"n_layers=8", "update=sum", "feature_map.nu=3", "tied_embeddings=true",
             "norm_eps=1e-5", "positions=\"none\""});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->n_layers, 8);
  EXPECT_EQ(config->update, UpdateRule::kSum);
  EXPECT_EQ(config->feature_map.nu, 3);
  EXPECT_TRUE(config->tied_embeddings);
  EXPECT_FLOAT_EQ(config->norm_eps, 1e-5f);
  EXPECT_EQ(config->positions, Positions::kNone);
  EXPECT_EQ(config->d_model, 256);  // the file's, untouched
  // A bare name replaces the map (dpfp's nu would be unknown to elu1); a
  // field within a shorthand map makes it an object.
  auto elu = Config::FromFile(path, {"feature_map=elu1"});
  ASSERT_TRUE(elu.ok()) << elu.status();
  EXPECT_EQ(elu->feature_map.kind, FeatureMapKind::kElu1);
  EXPECT_EQ(elu->Attention().DPhi(), 64);
  auto dpfp = Config::FromFile(path, {"feature_map=dpfp", "feature_map.nu=2"});
  ASSERT_TRUE(dpfp.ok()) << dpfp.status();
  EXPECT_EQ(dpfp->feature_map.nu, 2);
  // Later settings win; no settings is the file itself.
  EXPECT_EQ(Config::FromFile(path, {"n_layers=2", "n_layers=3"})->n_layers, 3);
  EXPECT_EQ(Config::FromFile(path, {})->ToJson(), Config::FromJson(kExample)->ToJson());
  // A file that lacks a required field, given by --set.
  const std::string partial = ::testing::TempDir() + "fwp_config_partial.json";
  std::ofstream(partial) << absl::StrReplaceAll(kExample, {{R"("vocab_size": 8192,)", ""}});
  EXPECT_FALSE(Config::FromFile(partial).ok());
  auto given = Config::FromFile(partial, {"vocab_size=1000"});
  ASSERT_TRUE(given.ok()) << given.status();
  EXPECT_EQ(given->vocab_size, 1000);
}

TEST(Config, RefusesBadSettingsNamingThem) {
  const std::string path = ::testing::TempDir() + "fwp_config_bad_settings.json";
  std::ofstream(path) << kExample;
  auto error = [&](std::vector<std::string> settings) {
    auto config = Config::FromFile(path, settings);
    EXPECT_FALSE(config.ok()) << "accepted " << settings[0];
    return std::string(config.status().message());
  };
  const std::pair<std::string, std::string> cases[] = {
      {"n_layer=8", "unknown config field 'n_layer' (did you mean 'n_layers'?)"},
      {"n_layers", "--set 'n_layers' is not field=value"},
      {"=3", "--set '=3' is not field=value"},
      {"feature_map..nu=2", "has an empty field name"},
      {"d_model.x=2", "'d_model' is 256, not an object"},
      {"update.x=2", "'update' is \"delta\", not an object"},  // no shorthand but feature_map's
      {"n_layers=eight", "config field 'n_layers' must be an integer, got \"eight\""},
      {"n_layers=0", "config field 'n_layers' must be in [1, 1024], got 0"},
      {"update=hebb", "config field 'update' must be one of"},
      {"feature_map.kind=elu1", "unknown config field 'feature_map.nu'"},
  };
  for (const auto& [setting, want] : cases) {
    const std::string message = error({setting});
    EXPECT_NE(message.find(want), std::string::npos) << setting << ": " << message;
    EXPECT_NE(message.find(path + " with --set " + setting), std::string::npos) << message;
  }
}

// Every field within its own bound, the whole far beyond any machine:
// refused by validation, not by bad_alloc when the weights are allocated.
TEST(Config, RefusesAHugeParameterCount) {
  const std::string error = ErrorWith(R"("vocab_size": 8192, "d_model": 256)",
                                      R"("vocab_size": 16777216, "d_model": 65536)");
  EXPECT_NE(error.find("parameters"), std::string::npos) << error;
  EXPECT_NE(error.find("2^34"), std::string::npos) << error;
}

// Few enough parameters, but a state per session (the server's unit of
// memory, times its slots) of hundreds of GB.
TEST(Config, RefusesAHugeState) {
  auto config = Config::FromJson(absl::StrReplaceAll(
      kExample, {{R"("n_heads": 4,)", R"("n_heads": 1024,)"}, {R"("d_head": 64,)", R"("d_head": 2048,)"}}));
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("state is"), std::string::npos) << config.status();
  EXPECT_NE(config.status().message().find("16 GiB"), std::string::npos) << config.status();
}

TEST(Config, RefusesBadFieldsNamingThem) {
  EXPECT_EQ(ErrorWith("\"d_model\"", "\"d_modle\""),
            "unknown config field 'd_modle' (did you mean 'd_model'?)");
  EXPECT_NE(ErrorWith("\"n_layers\": 4", "\"n_layers\": \"4\"").find("'n_layers'"),
            std::string::npos);
  EXPECT_NE(ErrorWith("\"n_heads\": 4", "\"n_heads\": 0").find("'n_heads'"), std::string::npos);
  EXPECT_NE(ErrorWith("\"vocab_size\": 8192,", "").find("'vocab_size' is required"),
            std::string::npos);
  EXPECT_NE(ErrorWith("\"delta\"", "\"deltanet\"").find("'update'"), std::string::npos);
  EXPECT_NE(ErrorWith(R"("nu": 2})", R"("nu": 2, "features": 3})").find("'feature_map.features'"),
            std::string::npos);
  EXPECT_NE(ErrorWith(R"({"kind": "dpfp", "nu": 2})", R"({"kind": "elu1", "nu": 2})")
                .find("'feature_map.nu'"),
            std::string::npos);
  EXPECT_NE(ErrorWith(R"({"kind": "dpfp", "nu": 2})", R"({"kind": "favor"})")
                .find("'feature_map.features' is required"),
            std::string::npos);
  EXPECT_NE(ErrorWith(R"({"kind": "dpfp", "nu": 2})", R"("identity")").find("'sum_norm'"),
            std::string::npos);
  EXPECT_NE(ErrorWith("\"attention_normalizer\": false", "\"attention_normalizer\": true")
                .find("'attention_normalizer'"),
            std::string::npos);
  EXPECT_NE(ErrorWith("\"d_model\": 256", "\"d_model\": 255").find("'positions'"),
            std::string::npos);
  EXPECT_NE(ErrorWith("1e-6", "-1").find("'norm_eps'"), std::string::npos);
  EXPECT_NE(ErrorWith("\"gelu\"", "\"swish\"").find("'activation'"), std::string::npos);
  EXPECT_NE(ErrorWith("}", ",}").find("not valid JSON"), std::string::npos);
  // A number past double's range is the JSON library's out_of_range, not a
  // parse error: refused all the same (it used to end the process).
  EXPECT_NE(ErrorWith("1e-6", "1e999").find("not valid JSON"), std::string::npos);
}

}  // namespace
}  // namespace fwp
