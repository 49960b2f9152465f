#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <limits>

#include "model/weights.h"
#include "tests/sized_config.h"

namespace fwp {
namespace {

std::string TempPath(const std::string& name) { return ::testing::TempDir() + name; }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

// A file with the given JSON header and `data_bytes` bytes of data.
std::string Handmade(const std::string& header, size_t data_bytes, float fill = 1.0f) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out += header;
  for (size_t i = 0; i < data_bytes / 4; ++i) out.append(reinterpret_cast<char*>(&fill), 4);
  return out;
}

// The error message of opening (or, if that succeeds, reading `tensor` of) a file.
std::string ErrorOf(const std::string& bytes, const std::string& tensor = "a") {
  const std::string path = TempPath("bad.safetensors");
  WriteAll(path, bytes);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return std::string(file.status().message());
  auto data = (*file)->ReadF32(tensor);
  return data.ok() ? "" : std::string(data.status().message());
}

TEST(Safetensors, RoundTripsTensorsAndMetadata) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 5.0f, -6.5f};
  const std::vector<float> b = {42.0f};
  const std::string path = TempPath("round.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path,
                  {{"a", DType::kF32, {2, 3}, {reinterpret_cast<const uint8_t*>(a.data()), 24}},
                   {"b.c", DType::kF32, {1}, {reinterpret_cast<const uint8_t*>(b.data()), 4}}},
                  {{"format", "fwp"}})
                  .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "fwp");
  EXPECT_EQ((*file)->Find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(*(*file)->ReadF32("a"), a);
  EXPECT_EQ(*(*file)->ReadF32("b.c"), b);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  // The data section starts 8-byte aligned.
  const std::string bytes = ReadAll(path);
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);
}

TEST(Safetensors, ReadsHalfAndBFloat16) {
  // 1.0, −2.0, 0.5, 65504 (largest half), 2^-24 (smallest subnormal half)
  const uint16_t half[] = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001};
  const uint16_t bf16[] = {0x3f80, 0xc000, 0x3f00, 0x4780, 0x0000};
  const std::string path = TempPath("half.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path,
                  {{"h", DType::kF16, {5}, {reinterpret_cast<const uint8_t*>(half), 10}},
                   {"b", DType::kBF16, {5}, {reinterpret_cast<const uint8_t*>(bf16), 10}}},
                  {})
                  .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*(*file)->ReadF32("h"),
            (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(*(*file)->ReadF32("b"), (std::vector<float>{1.0f, -2.0f, 0.5f, 65536.0f, 0.0f}));
}

TEST(Safetensors, RefusesEachKindOfCorruptionWithItsMessage) {
  const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string b = R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]})";
  EXPECT_EQ(ErrorOf(Handmade("{" + a + "," + b + "}", 16)), "");

  // Truncated by one byte: the last tensor runs past the end.
  std::string good = Handmade("{" + a + "," + b + "}", 16);
  EXPECT_NE(ErrorOf(good.substr(0, good.size() - 1)).find("truncated"), std::string::npos);
  // Truncated inside the header.
  EXPECT_NE(ErrorOf(good.substr(0, 20)).find("does not fit"), std::string::npos);
  EXPECT_NE(ErrorOf("abc").find("too short"), std::string::npos);
  // Overlapping tensors.
  const std::string b_overlap = R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]})";
  EXPECT_NE(ErrorOf(Handmade("{" + a + "," + b_overlap + "}", 12)).find("overlap"),
            std::string::npos);
  // A hole between tensors, and bytes after the last one.
  const std::string b_gap = R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]})";
  EXPECT_NE(ErrorOf(Handmade("{" + a + "," + b_gap + "}", 20)).find("belong to no tensor"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Handmade("{" + a + "}", 12)).find("belong to no tensor"), std::string::npos);
  // Shape and byte range disagree.
  const std::string a_shape = R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})";
  EXPECT_NE(ErrorOf(Handmade("{" + a_shape + "}", 8)).find("needs 12 bytes"), std::string::npos);
  // Unknown dtype, broken JSON, negative dimension.
  const std::string a_dtype = R"("a":{"dtype":"F8","shape":[2],"data_offsets":[0,8]})";
  EXPECT_NE(ErrorOf(Handmade("{" + a_dtype + "}", 8)).find("unknown dtype"), std::string::npos);
  EXPECT_NE(ErrorOf(Handmade("{" + a, 8)).find("not valid JSON"), std::string::npos);
  const std::string a_neg = R"("a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]})";
  EXPECT_NE(ErrorOf(Handmade("{" + a_neg + "}", 8)).find("bad dimension"), std::string::npos);
  // A number past double's range (the JSON library's out_of_range).
  const std::string a_huge = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,1e999]})";
  EXPECT_NE(ErrorOf(Handmade("{" + a_huge + "}", 8)).find("not valid JSON"), std::string::npos);
  // Dimensions whose product wraps past 2^64 (to 0 here: 2^40 · 2^24).
  const std::string a_wrap =
      R"("a":{"dtype":"F32","shape":[1099511627776,16777216],"data_offsets":[0,0]})";
  EXPECT_NE(ErrorOf(Handmade("{" + a_wrap + "}", 0)).find("implausibly large"), std::string::npos);
  // Non-finite values are refused when read.
  EXPECT_NE(ErrorOf(Handmade("{" + a + "}", 8, std::numeric_limits<float>::infinity()))
                .find("non-finite"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Handmade("{" + a + "}", 8, std::numeric_limits<float>::quiet_NaN()))
                .find("non-finite"),
            std::string::npos);
}

Config TinyConfig() { return testing::SizedConfig(11, 8, 1, 2, 4, 16); }

TEST(Safetensors, WeightsAreCheckedAgainstTheConfig) {
  const Config config = TinyConfig();
  const HostWeights weights = RandomWeights(config, 1);
  const std::string path = TempPath("weights.safetensors");
  ASSERT_TRUE(WriteWeights(path, config, weights).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto read = ReadWeights(**file, config);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, weights);

  Config wider = config;
  wider.d_ff = 32;
  auto misshapen = ReadWeights(**file, wider);
  ASSERT_FALSE(misshapen.ok());
  EXPECT_NE(misshapen.status().message().find("'layers.0.ffn.up.weight' has shape [16, 8] but "
                                              "the config requires [32, 8]"),
            std::string::npos)
      << misshapen.status();

  Config untied = config;
  untied.tied_embeddings = false;
  auto missing = ReadWeights(**file, untied);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing tensor 'lm_head.weight'"), std::string::npos);

  HostWeights extra = RandomWeights(untied, 1);
  ASSERT_TRUE(WriteWeights(path, untied, extra).ok());
  auto file2 = SafetensorsFile::Open(path);
  ASSERT_TRUE(file2.ok());
  auto unexpected = ReadWeights(**file2, config);
  ASSERT_FALSE(unexpected.ok());
  EXPECT_NE(unexpected.status().message().find("unexpected tensor 'lm_head.weight'"),
            std::string::npos);
}

}  // namespace
}  // namespace fwp
