// Server-side generation logic: penalties, log-probabilities, stop strings,
// parameter validation, and the snapshot format.
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tuple>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/generation.h"
#include "server/penalty_table.h"
#include "server/snapshot.h"
#include "tests/server/server_fixture.h"

namespace fwp::server {
namespace {

using ::testing::HasSubstr;

GenerationParams Greedy() {
  GenerationParams p;
  p.max_tokens = 16;
  p.seed = 1;
  return p;
}

TEST(TokenSampler, RepetitionPenaltyMovesGreedyOffASeenToken) {
  std::vector<float> logits = {1.0f, 3.0f, 2.5f, -1.0f};
  GenerationParams p = Greedy();
  EXPECT_EQ(TokenSampler(p, {1}, 4).Sample(logits.data()).token, 1);
  p.repetition_penalty = 1.5f;  // 3 / 1.5 = 2 < 2.5
  EXPECT_EQ(TokenSampler(p, {1}, 4).Sample(logits.data()).token, 2);
  EXPECT_EQ(TokenSampler(p, {0}, 4).Sample(logits.data()).token, 1);
  // The output counts as seen: 3 → 2 after the first draw, under 2.5.
  TokenSampler output(p, {}, 4);
  EXPECT_EQ(output.Sample(logits.data()).token, 1);
  EXPECT_EQ(output.Sample(logits.data()).token, 2);
  // Both kinds on one token: 3 / 1.5 − (0.2 + 0.1 × 1) = 1.7, under 1.8.
  std::vector<float> close = {1.8f, 3.0f};
  p.presence_penalty = 0.2f;
  p.frequency_penalty = 0.1f;
  TokenSampler both(p, {}, 2);
  EXPECT_EQ(both.Sample(close.data()).token, 1);
  EXPECT_EQ(both.Sample(close.data()).token, 0);
  // 3 / 1.5 − (0.1 + 0.1 × 1) = 1.8 stays above 1.75; − (0.1 + 0.1 × 2) = 1.7 does not.
  p.presence_penalty = 0.1f;
  std::vector<float> above = {1.75f, 3.0f};
  TokenSampler still(p, {}, 2);
  EXPECT_EQ(still.Sample(above.data()).token, 1);
  EXPECT_EQ(still.Sample(above.data()).token, 1);
  EXPECT_EQ(still.Sample(above.data()).token, 0);
}

TEST(TokenSampler, PresenceAndFrequencyPenaltiesCountTheOutput) {
  std::vector<float> logits = {2.0f, 1.8f, 0.0f};
  GenerationParams p = Greedy();
  p.frequency_penalty = 0.15f;
  TokenSampler sampler(p, {}, 3);
  // 2.0 → 1.85 → 1.7 < 1.8: the second-best token takes over on the third draw.
  EXPECT_EQ(sampler.Sample(logits.data()).token, 0);
  EXPECT_EQ(sampler.Sample(logits.data()).token, 0);
  EXPECT_EQ(sampler.Sample(logits.data()).token, 1);
  GenerationParams q = Greedy();
  q.presence_penalty = 0.3f;  // once: 1.7 < 1.8
  TokenSampler presence(q, {}, 3);
  EXPECT_EQ(presence.Sample(logits.data()).token, 0);
  EXPECT_EQ(presence.Sample(logits.data()).token, 1);
}

TEST(TokenSampler, LogprobsAreFromTheUnmodifiedDistribution) {
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 1.0f};
  GenerationParams p = Greedy();
  p.logprobs = true;
  p.top_logprobs = 2;
  p.repetition_penalty = 10.0f;
  const auto pick = TokenSampler(p, {1}, 4).Sample(logits.data());
  double z = 0.0;
  for (float l : logits) z += std::exp(l);
  EXPECT_EQ(pick.token, 3);
  EXPECT_NEAR(pick.logprob, 1.0 - std::log(z), 1e-6);
  ASSERT_EQ(pick.top.size(), 2u);
  EXPECT_EQ(pick.top[0].id, 1);
  EXPECT_NEAR(pick.top[0].logprob, 2.0 - std::log(z), 1e-6);
  EXPECT_EQ(pick.top[1].id, 3);
}

TEST(TokenSampler, TheSameSeedGivesTheSameDraws) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f);
  GenerationParams p = Greedy();
  p.sampling.temperature = 1.0f;
  p.seed = 42;
  TokenSampler a(p, {}, 100), b(p, {}, 100);
  std::vector<int32_t> da, db;
  for (int i = 0; i < 50; ++i) {
    da.push_back(a.Sample(logits.data()).token);
    db.push_back(b.Sample(logits.data()).token);
  }
  EXPECT_EQ(da, db);
  EXPECT_GT(std::set<int32_t>(da.begin(), da.end()).size(), 5u);
}

// The engine draws rows without log-probabilities on the backend (Draw
// before the step, the penalties applied to the batch's logits, the backend's
// SampleRows, Accept after): the tokens must be those Sample picks from the
// same logits and seed, with every penalty. Log-probabilities need the whole
// row on the host.
TEST(TokenSampler, BatchedDrawsPickWhatSamplePicks) {
  const int64_t V = 300;
  struct Case {
    float temperature;
    int32_t top_k;
    float top_p, repetition, presence, frequency;
  };
  const Case cases[] = {{0.0f, 0, 1.0f, 1.0f, 0.0f, 0.0f}, {0.8f, 0, 1.0f, 1.0f, 0.0f, 0.0f},
                        {1.2f, 20, 0.9f, 1.0f, 0.0f, 0.0f}, {0.0f, 0, 1.0f, 1.3f, 0.0f, 0.0f},
                        {0.0f, 0, 1.0f, 1.0f, 0.4f, 0.2f}, {0.9f, 0, 0.95f, 1.2f, 0.3f, 0.1f},
                        {0.7f, 40, 1.0f, 0.8f, -0.2f, 0.05f}};
  for (int n = 0; n < 7; ++n) {
    const Case& c = cases[n];
    GenerationParams p = Greedy();
    p.sampling.temperature = c.temperature;
    p.sampling.top_k = c.top_k;
    p.sampling.top_p = c.top_p;
    p.repetition_penalty = c.repetition;
    p.presence_penalty = c.presence;
    p.frequency_penalty = c.frequency;
    p.seed = 9;
    const std::vector<int32_t> prompt = {3, 17, 17, 250, 299, 0};
    TokenSampler host(p, prompt, V), batched(p, prompt, V);
    EXPECT_FALSE(batched.needs_logits());
    // The request is row 1 of a batch of 3; the other rows' logits must not move.
    std::vector<float> logits(V), batch(3 * V);
    std::vector<int32_t> seen;
    for (int step = 0; step < 60; ++step) {
      // Peaked on a few ids, so that greedy draws repeat and the penalties bite.
      for (int64_t i = 0; i < V; ++i) {
        logits[i] = std::sin(0.37f * i * (step + 1)) + (i % 50 == 7 ? 0.8f : 0.0f);
      }
      for (int64_t i = 0; i < 3 * V; ++i) batch[i] = std::cos(0.11f * i);
      std::copy(logits.begin(), logits.end(), batch.begin() + V);
      const std::vector<float> before = batch;
      RowSampling rows[3] = {};
      rows[1] = batched.Draw();
      std::vector<LogitPenalty> penalties;
      batched.AppendPenalties(1, &penalties);
      cpu::ApplyPenalties(batch.data(), V, penalties.data(), static_cast<int64_t>(penalties.size()));
      for (int64_t i = 0; i < V; ++i) {
        EXPECT_EQ(batch[i], before[i]);
        EXPECT_EQ(batch[2 * V + i], before[2 * V + i]);
      }
      int32_t tokens[3] = {-1, -1, -1};
      cpu::SampleRows(batch.data(), 3, V, rows, tokens);
      const int32_t expected = host.Sample(logits.data()).token;
      EXPECT_EQ(batched.Accept(tokens[1]).token, expected) << "case " << n << ", step " << step;
      seen.push_back(expected);
    }
    if (c.repetition != 1.0f || c.presence != 0.0f || c.frequency != 0.0f) {
      GenerationParams plain = p;
      plain.repetition_penalty = 1.0f;
      plain.presence_penalty = plain.frequency_penalty = 0.0f;
      TokenSampler unpenalised(plain, prompt, V);
      std::vector<int32_t> other;
      for (int step = 0; step < 60; ++step) {
        for (int64_t i = 0; i < V; ++i) {
          logits[i] = std::sin(0.37f * i * (step + 1)) + (i % 50 == 7 ? 0.8f : 0.0f);
        }
        other.push_back(unpenalised.Sample(logits.data()).token);
      }
      EXPECT_NE(seen, other) << "the penalties changed no draw";
    }
  }
  for (auto set : std::vector<void (*)(GenerationParams&)>{
           [](GenerationParams& q) { q.logprobs = true; },
           [](GenerationParams& q) { q.top_logprobs = 3; }}) {
    GenerationParams q = Greedy();
    q.repetition_penalty = 1.1f;
    set(q);
    EXPECT_TRUE(TokenSampler(q, {}, V).needs_logits());
  }
}

TEST(ValidateGenerationParams, NamesTheField) {
  const GenerationLimits limits;
  const auto message = [&](GenerationParams p) {
    return std::string(ValidateGenerationParams(p, limits, 100).message());
  };
  EXPECT_TRUE(ValidateGenerationParams(Greedy(), limits, 100).ok());
  GenerationParams p = Greedy();
  p.sampling.temperature = NAN;
  EXPECT_THAT(message(p), HasSubstr("temperature"));
  p = Greedy();
  p.repetition_penalty = 0.0f;
  EXPECT_THAT(message(p), HasSubstr("repetition_penalty"));
  p = Greedy();
  p.frequency_penalty = -2.5f;
  EXPECT_THAT(message(p), HasSubstr("frequency_penalty"));
  p = Greedy();
  p.stop_token_ids = {100};
  EXPECT_THAT(message(p), HasSubstr("stop_token_ids[0]"));
  p = Greedy();
  p.stop = {std::string(300, 'x')};
  EXPECT_THAT(message(p), HasSubstr("stopping.stop[0]"));
  EXPECT_THAT(std::string(ValidatePrompt({}, 10, 5, "prompt").message()), HasSubstr("empty"));
  EXPECT_THAT(std::string(ValidatePrompt({1, 2, 3, 4, 5, 6}, 10, 5, "prompt").message()),
              HasSubstr("at most 5"));
}

class TextStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::Load(testing::DefaultModelDir() + "/tokenizer.model");
    ASSERT_TRUE(t.ok());
    tokenizer_ = std::move(*t);
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TextStreamTest, WithoutStopsItIsTheDecodedContinuation) {
  const auto prompt = tokenizer_->Encode("The jury said");
  const auto rest = tokenizer_->Encode("The jury said that the election was conducted");
  TextStream stream(*tokenizer_, prompt, {});
  std::string text;
  for (size_t i = prompt.size(); i < rest.size(); ++i) text += stream.Push(rest[i]);
  text += stream.Finish();
  EXPECT_EQ(text, " that the election was conducted");
}

TEST_F(TextStreamTest, HoldsBackAPossibleStopAndCutsAtIt) {
  const auto prompt = tokenizer_->Encode("The jury said");
  const auto all = tokenizer_->Encode("The jury said that the election was conducted");
  for (const std::string stop : {"election", "t the e", "ion was", "xyz", "d that"}) {
    TextStream stream(*tokenizer_, prompt, {stop, "never matches this"});
    std::string text;
    for (size_t i = prompt.size(); i < all.size() && !stream.stopped(); ++i) {
      text += stream.Push(all[i]);
      // Nothing shown ever contains the stop string.
      EXPECT_EQ(text.find(stop), std::string::npos);
    }
    text += stream.Finish();
    const std::string full = " that the election was conducted";
    const size_t at = full.find(stop);
    EXPECT_EQ(text, full.substr(0, at)) << stop;
    EXPECT_EQ(stream.stopped(), at != std::string::npos) << stop;
  }
}

// ---- Snapshots ---------------------------------------------------------------

SessionSnapshot Sample() {
  SessionSnapshot s;
  s.session_id = "0123456789abcdef0123456789abcdef";
  s.owner = "alice";
  s.position = 1234;
  s.pending = {77};
  s.state.resize(4096);
  for (size_t i = 0; i < s.state.size(); ++i) s.state[i] = static_cast<char>(i * 31 + 7);
  return s;
}

TEST(Snapshot, RoundTrips) {
  const SessionSnapshot s = Sample();
  auto back = DecodeSnapshot(EncodeSnapshot(s, 99), 99, 4096, s.session_id);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->session_id, s.session_id);
  EXPECT_EQ(back->owner, "alice");
  EXPECT_EQ(back->position, 1234);
  EXPECT_EQ(back->pending, std::vector<int32_t>{77});
  EXPECT_EQ(back->state, s.state);
}

TEST(Snapshot, RefusesEachKindOfDamageNamingIt) {
  const SessionSnapshot s = Sample();
  const std::string good = EncodeSnapshot(s, 99);
  const auto refuse = [&](std::string bytes, uint64_t fingerprint, int64_t state_bytes,
                          const std::string& id, const std::string& why) {
    auto r = DecodeSnapshot(bytes, fingerprint, state_bytes, id);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << why;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(why));
  };
  refuse("hello", 99, 4096, "", "magic");
  std::string v = good;
  v[8] = 7;
  refuse(v, 99, 4096, "", "version 7");
  refuse(good, 98, 4096, "", "another model");
  refuse(good, 99, 8192, "", "8192");
  refuse(good.substr(0, good.size() - 1), 99, 4096, "", "truncated");
  std::string flipped = good;
  flipped[good.size() / 2] ^= 1;
  refuse(flipped, 99, 4096, "", "checksum");
  // The header is covered too: a flipped bit of the position (in range)
  // would restore the session at another token count.
  std::string position = good;
  position[24] ^= 4;
  refuse(position, 99, 4096, "", "checksum");
  refuse(good, 99, 4096, "ffffffffffffffffffffffffffffffff", "not ffff");
}

// Version 1 (its checksum over what follows the header only), as servers
// before version 2 wrote them, is still read.
TEST(Snapshot, ReadsVersionOne) {
  const SessionSnapshot s = Sample();
  std::string v1 = EncodeSnapshot(s, 99);
  const uint32_t one = 1;
  std::memcpy(v1.data() + 8, &one, 4);
  const uint32_t crc = static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(v1.data() + 64), v1.size() - 64));
  std::memcpy(v1.data() + 48, &crc, 4);
  auto back = DecodeSnapshot(v1, 99, 4096, s.session_id);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->position, 1234);
  EXPECT_EQ(back->state, s.state);
  EXPECT_NE(v1, EncodeSnapshot(s, 99)) << "this server writes version 2";
}

TEST(Snapshot, WritesAtomicallyAndReadsBackWithThePathInErrors) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/s.fwps";
  ASSERT_TRUE(WriteSnapshot(path, Sample(), 5).ok());
  EXPECT_TRUE(ReadSnapshot(path, 5, 4096, "").ok());
  auto wrong = ReadSnapshot(path, 6, 4096, "");
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr(path));
  EXPECT_EQ(ReadSnapshot(dir.path() + "/missing.fwps", 5, 4096, "").status().code(),
            absl::StatusCode::kNotFound);
  // Only the final file is left: no temporaries.
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1);
}

TEST(Snapshot, ModelFingerprintIsFnv1aOfBothFilesReadPieceByPiece) {
  // A weights file over two of the hash's 1 MiB read pieces, not a multiple
  // of one: the fingerprint must be the bytes' FNV-1a whatever the pieces.
  testing::TempDir dir;
  std::string config = "{\"d_model\": 8}", weights(2 * (1 << 20) + 12345, '\0');
  uint32_t x = 12345;
  for (char& c : weights) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  std::ofstream(dir.path() + "/config.json", std::ios::binary) << config;
  std::ofstream(dir.path() + "/model.safetensors", std::ios::binary) << weights;
  uint64_t expected = 0xcbf29ce484222325ull;
  for (const std::string* bytes : {&config, &weights}) {
    for (unsigned char c : *bytes) expected = (expected ^ c) * 0x100000001b3ull;
    expected = (expected ^ 0xff) * 0x100000001b3ull;
  }
  auto fingerprint = ModelFingerprint(dir.path());
  ASSERT_TRUE(fingerprint.ok()) << fingerprint.status();
  EXPECT_EQ(*fingerprint, expected);
  weights[weights.size() - 1] ^= 1;  // one bit in the last piece
  std::ofstream(dir.path() + "/model.safetensors", std::ios::binary) << weights;
  EXPECT_NE(*ModelFingerprint(dir.path()), expected);
  std::filesystem::remove(dir.path() + "/config.json");
  auto missing = ModelFingerprint(dir.path());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("config.json"));
}

// A request's row of the penalty table, filled from its list and then kept
// up by one entry a drawn token, holds what its TokenSampler says of every
// token; what was queued for a slot's previous request never lands on the
// next one's row; repeated entries keep the last value.
TEST(PenaltyTable, RowsFollowTheirSamplers) {
  auto backend = MakeCpuBackend();
  const int64_t vocab = 50, rows = 4;
  PenaltyTable table(*backend, rows, vocab);
  GenerationParams p;
  p.repetition_penalty = 1.2f;
  p.frequency_penalty = 0.1f;
  const std::vector<int32_t> prompt = {30, 7, 7, 9};  // output tokens: 0–11
  TokenSampler sampler(p, prompt, vocab);
  ASSERT_TRUE(sampler.penalised());
  ASSERT_TRUE(table.Assign(2, sampler.penalties()).ok());
  Rng rng(8);
  for (int step = 0; step < 30; ++step) {
    const auto token = static_cast<int32_t>(rng.Next() % 12);
    sampler.Accept(token);
    table.Set(2, token, sampler.TableValue(token));
    if (step % 7 == 0) table.Set(2, token, sampler.TableValue(token));  // twice: the same
    if (step % 3 == 0) {
      ASSERT_TRUE(table.Flush().ok());
    }
  }
  ASSERT_TRUE(table.Flush().ok());
  EXPECT_EQ(table.pending_bytes(), 0);
  const int32_t* row = table.data() + 2 * vocab;
  int listed = 0;
  for (int32_t t = 0; t < vocab; ++t) {
    EXPECT_EQ(row[t], sampler.TableValue(t)) << "token " << t;
    listed += row[t] > 0;
  }
  EXPECT_GE(listed, 3);
  EXPECT_EQ(row[30], 1);  // seen in the prompt, not in the output
  // The slot's next request: what the last one queued is dropped.
  table.Set(2, 40, 5);
  GenerationParams q;
  q.presence_penalty = 0.5f;  // lists output tokens only
  TokenSampler next(q, prompt, vocab);
  ASSERT_TRUE(table.Assign(2, next.penalties()).ok());
  ASSERT_TRUE(table.Flush().ok());
  for (int32_t t = 0; t < vocab; ++t) EXPECT_EQ(row[t], 0) << "token " << t;
  EXPECT_EQ(next.TableRow(1, 2).presence, 0.5f);
  EXPECT_FALSE(table.Assign(static_cast<int32_t>(rows), {}).ok());
  EXPECT_EQ(table.generation(), 0u);
}

}  // namespace
}  // namespace fwp::server
