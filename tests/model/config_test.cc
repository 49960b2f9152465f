#include "model/config.h"

#include <gtest/gtest.h>

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

// Every field within its own bound, the whole far beyond any machine:
// refused by validation, not by bad_alloc when the weights are allocated.
TEST(Config, RefusesAHugeParameterCount) {
  const std::string error = ErrorWith(R"("vocab_size": 8192, "d_model": 256)",
                                      R"("vocab_size": 16777216, "d_model": 65536)");
  EXPECT_NE(error.find("parameters"), std::string::npos) << error;
  EXPECT_NE(error.find("2^34"), std::string::npos) << error;
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
}

}  // namespace
}  // namespace fwp
