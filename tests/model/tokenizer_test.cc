#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/test_tokenizer.h"

namespace fwp {
namespace {

// True when `s` is complete UTF-8 (no sequence cut short).
bool WholeUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : 4;
    if (i + len > s.size()) return false;
    for (size_t j = 1; j < len; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) >> 6) != 0x2) return false;
    }
    i += len;
  }
  return true;
}

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::Load(testing::TestTokenizerPath());
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = std::move(*t);
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TokenizerTest, EncodesAndDecodesBackToTheText) {
  const std::string text = "The jury said the memory holds a key.";
  const auto ids = tokenizer_->Encode(text);
  EXPECT_GT(ids.size(), 3u);
  EXPECT_LT(ids.size(), text.size());
  EXPECT_EQ(tokenizer_->Decode(ids), text);
  EXPECT_EQ(tokenizer_->vocab_size(), 320);
  EXPECT_GE(tokenizer_->bos_id(), 0);
  EXPECT_GE(tokenizer_->eos_id(), 0);
  EXPECT_NE(tokenizer_->bos_id(), tokenizer_->eos_id());
}

TEST_F(TokenizerTest, UnknownIdsDecodeToNothing) {
  auto ids = tokenizer_->Encode("The jury");
  const std::string plain = tokenizer_->Decode(ids);
  ids.insert(ids.begin() + 1, 100000);
  ids.push_back(-3);
  EXPECT_EQ(tokenizer_->Decode(ids), plain);
}

TEST_F(TokenizerTest, StreamingNeverSplitsAMultiByteCharacter) {
  const std::string text = "The caf\xC3\xA9 costs 3 \xE2\x82\xAC; \xE6\x97\xA5\xE6\x9C\xAC the jury";
  const auto ids = tokenizer_->Encode(text);
  ASSERT_EQ(tokenizer_->Decode(ids), text);
  // The euro sign is rare: it arrives as three byte tokens.
  const auto euro = tokenizer_->Encode("\xE2\x82\xAC");
  ASSERT_GE(euro.size(), 3u) << "expected byte fallback for the euro sign";

  StreamDecoder stream(*tokenizer_);
  std::string streamed;
  int held = 0;
  for (int32_t id : ids) {
    const std::string piece = stream.Push(id);
    EXPECT_TRUE(WholeUtf8(piece)) << "emitted half a character: " << piece;
    if (piece.empty()) ++held;
    streamed += piece;
  }
  streamed += stream.Flush();
  EXPECT_EQ(streamed, text);
  EXPECT_GE(held, 2);  // at least the first two bytes of the euro sign waited
}

TEST_F(TokenizerTest, APrimedStreamContinuesTheContextWithItsSpace) {
  const auto context = tokenizer_->Encode("The jury");
  const auto more = tokenizer_->Encode("The jury said the memory");
  ASSERT_GT(more.size(), context.size());
  StreamDecoder stream(*tokenizer_);
  stream.Prime(context);
  std::string text;
  for (size_t i = context.size(); i < more.size(); ++i) text += stream.Push(more[i]);
  text += stream.Flush();
  EXPECT_EQ(text, " said the memory");
  StreamDecoder fresh(*tokenizer_);  // unprimed, the first space is dropped
  std::string plain;
  for (size_t i = context.size(); i < more.size(); ++i) plain += fresh.Push(more[i]);
  EXPECT_EQ(plain, "said the memory");
}

TEST_F(TokenizerTest, FlushReleasesAnIncompleteTail) {
  const auto euro = tokenizer_->Encode("\xE2\x82\xAC");
  ASSERT_GE(euro.size(), 3u);
  StreamDecoder stream(*tokenizer_);
  for (size_t i = 0; i + 1 < euro.size(); ++i) EXPECT_EQ(stream.Push(euro[i]), "");
  EXPECT_NE(stream.Flush().find("\xEF\xBF\xBD"), std::string::npos);  // U+FFFD, once
  EXPECT_EQ(stream.Flush(), "");
}

// Tokens that print nothing (here a run of lead bytes, never a character)
// are not held back without end: past a few they go out (as U+FFFD), and
// what follows them still streams.
TEST_F(TokenizerTest, ARunOfTokensThatPrintNothingIsNotHeldForever) {
  int32_t lead = -1;  // the byte token 0xE2
  for (int32_t id = 0; id < tokenizer_->vocab_size() && lead < 0; ++id) {
    if (tokenizer_->Piece(id) == "<0xE2>") lead = id;
  }
  ASSERT_GE(lead, 0);
  StreamDecoder stream(*tokenizer_);
  std::string out;
  for (int i = 0; i < 40; ++i) out += stream.Push(lead);
  EXPECT_NE(out.find("\xEF\xBF\xBD"), std::string::npos) << "all 40 held back";
  std::string rest;
  for (int32_t id : tokenizer_->Encode(" the jury")) rest += stream.Push(id);
  rest += stream.Flush();
  EXPECT_NE((out + rest).find("the jury"), std::string::npos) << out + rest;
  // Let out just after a character's first byte (the 17th held token is the
  // euro sign's 0xE2): its other bytes and what follows still come out.
  auto byte_token = [&](const char* piece) {
    for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
      if (tokenizer_->Piece(id) == piece) return id;
    }
    return -1;
  };
  const std::vector<int32_t> euro = {lead, byte_token("<0x82>"), byte_token("<0xAC>")};
  ASSERT_GE(euro[1], 0);
  ASSERT_GE(euro[2], 0);
  StreamDecoder split(*tokenizer_);
  std::string text;
  for (int i = 0; i < 16; ++i) text += split.Push(lead);
  for (int32_t id : euro) text += split.Push(id);
  for (int32_t id : tokenizer_->Encode(" said the jury")) text += split.Push(id);
  text += split.Flush();
  EXPECT_NE(text.find("\xE2\x82\xAC"), std::string::npos) << text;
  EXPECT_NE(text.find("said the jury"), std::string::npos) << text;
}

// The same pieces whatever the file's bytes (a model records where it was
// trained), and another vocabulary told apart.
TEST_F(TokenizerTest, SameVocabularyComparesPiecesNotBytes) {
  const std::string copy = ::testing::TempDir() + "fwp_same_vocabulary.model";
  std::filesystem::copy_file(testing::TestTokenizerPath(), copy,
                             std::filesystem::copy_options::overwrite_existing);
  auto again = Tokenizer::Load(copy);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameVocabulary(*tokenizer_, **again));
  auto brown = Tokenizer::Load(std::string(FWP_SOURCE_DIR) + "/models/default/tokenizer.model");
  ASSERT_TRUE(brown.ok()) << brown.status();
  EXPECT_TRUE(SameVocabulary(**brown, **brown));
  EXPECT_FALSE(SameVocabulary(*tokenizer_, **brown));
  // Pieces, not their decoded text: a word-initial piece keeps its "▁", a
  // byte piece its code.
  const Tokenizer& b = **brown;
  const int32_t the = b.Encode("the cat")[0];
  EXPECT_EQ(b.Piece(the), "\u2581the");
  EXPECT_EQ(b.Piece(3), "<0x00>");
  EXPECT_EQ(b.Piece(-1), "");
  EXPECT_EQ(b.Piece(b.vocab_size()), "");
}

TEST(Tokenizer, MissingOrCorruptModelIsRefused) {
  auto missing = Tokenizer::Load("/nonexistent/tokenizer.model");
  EXPECT_FALSE(missing.ok());
  const std::string bad = ::testing::TempDir() + "bad_tokenizer.model";
  { std::ofstream(bad) << "not a sentencepiece model"; }
  auto corrupt = Tokenizer::Load(bad);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_NE(corrupt.status().message().find(bad), std::string::npos);
}

}  // namespace
}  // namespace fwp
