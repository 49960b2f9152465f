// fwp-server end to end over a real gRPC channel on loopback (CPU backend;
// the same tests run on a GPU build with backend "cuda" by hand).
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <sys/stat.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "model/model_dir.h"
#include "model/weights.h"
#include "server/snapshot.h"
#include "tests/server/server_fixture.h"

namespace fwp::server::testing {
namespace {

using ::testing::HasSubstr;

[[maybe_unused]] ::testing::Environment* const kBackendEnvironment =
    ::testing::AddGlobalTestEnvironment(new TestBackendEnvironment);

// A fixed prompt from the Brown corpus' vocabulary.
std::vector<int32_t> PromptIds(v1::Fwp::Stub& stub, const std::string& text) {
  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_text(text);
  v1::TokenizeResponse response;
  EXPECT_TRUE(stub.Tokenize(&context, request, &response).ok());
  return {response.ids().begin(), response.ids().end()};
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options = TestOptions();
    options.engine.slots = 80;
    r_ = StartServer(options);
    ASSERT_NE(r_.server, nullptr);
  }
  v1::Fwp::Stub& stub() { return *r_.stub; }
  Running r_;
};

TEST_F(ServerTest, StreamsTokensAndTextAndFinishesWithLength) {
  auto c = Generate(stub(), GreedyText("The jury said", 12));
  ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_EQ(c.tokens.size(), 12u);
  EXPECT_EQ(c.reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(c.usage.generated_tokens(), 12);
  EXPECT_EQ(c.usage.prompt_tokens(), static_cast<int>(PromptIds(stub(), "The jury said").size()));
  EXPECT_GT(c.usage.time_to_first_token_s(), 0.0);
  EXPECT_GE(c.messages.size(), 2u);  // streamed (tokens a slow reader missed come together)
  EXPECT_TRUE(c.messages.back().finished());
  EXPECT_TRUE(c.session_id.empty());  // no session kept
  // The streamed text is the detokenised continuation of the prompt.
  grpc::ClientContext context;
  v1::DetokenizeRequest request;
  for (int32_t t : PromptIds(stub(), "The jury said")) request.add_ids(t);
  for (int32_t t : c.tokens) request.add_ids(t);
  v1::DetokenizeResponse text;
  ASSERT_TRUE(stub().Detokenize(&context, request, &text).ok());
  EXPECT_EQ("The jury said" + c.text, text.text());
}

TEST_F(ServerTest, StopStringSplitAcrossTokensEndsTheTextBeforeIt) {
  // Token boundaries in the text come from Detokenize of the prompt and each
  // prefix of the output (stream messages may merge tokens when the reader
  // falls behind, so their boundaries are not token boundaries).
  grpc::ClientContext tokenize_context;
  v1::TokenizeRequest tokenize;
  tokenize.set_text("It was a cold day in");
  v1::TokenizeResponse prompt;
  ASSERT_TRUE(stub().Tokenize(&tokenize_context, tokenize, &prompt).ok());
  const std::vector<int32_t> prompt_ids(prompt.ids().begin(), prompt.ids().end());
  v1::GenerateRequest request = Greedy(prompt_ids, 24);
  request.set_logprobs(false);
  auto full = Generate(stub(), request);
  ASSERT_TRUE(full.status.ok());
  auto detokenize = [&](size_t generated) {
    grpc::ClientContext context;
    v1::DetokenizeRequest r;
    for (int32_t id : prompt_ids) r.add_ids(id);
    for (size_t i = 0; i < generated; ++i) r.add_ids(full.tokens[i]);
    v1::DetokenizeResponse text;
    EXPECT_TRUE(stub().Detokenize(&context, r, &text).ok());
    return text.text();
  };
  const size_t prompt_bytes = detokenize(0).size();
  // A stop string made of the end of one token's text and the start of the
  // next one's, whose first occurrence is there.
  std::string stop;
  size_t boundary = 0;  // bytes of generated text before the stop string
  for (size_t k = 2; k + 1 < full.tokens.size() && stop.empty(); ++k) {
    const size_t at = detokenize(k).size() - prompt_bytes;  // the end of token k−1's text
    if (at < 2 || at + 2 > full.text.size()) continue;
    const std::string candidate = full.text.substr(at - 2, 4);
    if (full.text.find(candidate) == at - 2) {
      stop = candidate;
      boundary = at - 2;
    }
  }
  ASSERT_FALSE(stop.empty()) << "no two-token stop string in: " << full.text;
  request.mutable_stopping()->add_stop(stop);
  auto c = Generate(stub(), request);
  ASSERT_TRUE(c.status.ok());
  EXPECT_EQ(c.reason, v1::FINISH_REASON_STOP);
  EXPECT_EQ(c.text, full.text.substr(0, boundary)) << "stop \"" << stop << "\"";
  EXPECT_LT(c.tokens.size(), full.tokens.size());
}

TEST_F(ServerTest, StopTokenIdEndsTheStreamWithThatToken) {
  auto full = Generate(stub(), GreedyText("The jury said", 10));
  ASSERT_TRUE(full.status.ok());
  auto request = GreedyText("The jury said", 10);
  request.mutable_stopping()->add_stop_token_ids(full.tokens[4]);
  auto c = Generate(stub(), request);
  ASSERT_TRUE(c.status.ok());
  EXPECT_EQ(c.reason, v1::FINISH_REASON_STOP);
  const auto first = std::find(full.tokens.begin(), full.tokens.end(), full.tokens[4]);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(full.tokens.begin(), first + 1));
}

// One greedy stream among 256 others (all in the pool at once), of other
// prompts, lengths and samplers.
TEST(ServerBatching, GreedyTokensAreTheSameAloneOrAmongTwoHundredFiftySixOthers) {
  ServerOptions options = TestOptions();
  options.engine.slots = 260;
  Running r = StartServer(options);
  ASSERT_NE(r.server, nullptr);
  v1::Fwp::Stub& stub = *r.stub;
  const std::vector<int32_t> prompt = PromptIds(stub, "The Fulton County Grand Jury said");
  auto alone = Generate(stub, Greedy(prompt, 24));
  ASSERT_TRUE(alone.status.ok());
  std::vector<Completion> results(257);
  std::vector<std::thread> threads;
  for (int i = 0; i < 257; ++i) {
    threads.emplace_back([&, i] {
      std::vector<int32_t> p = prompt;
      if (i != 17) p.insert(p.begin(), {static_cast<int32_t>(100 + i), 200 + i % 7});
      v1::GenerateRequest request = Greedy(p, i == 17 ? 24 : 24 + i % 5);
      if (i % 3 == 0 && i != 17) request.mutable_sampling()->set_temperature(1.0f);
      results[i] = Generate(stub, request);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& c : results) ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_EQ(results[17].tokens, alone.tokens);
  EXPECT_EQ(results[17].logprobs, alone.logprobs);  // bit for bit
}

// Rows without log-probabilities are drawn on the backend, their penalties
// applied there (Model::StepAndSample), the others on the host from their
// logits; a seeded sampled stream, a penalised one and a greedy one give the
// same tokens alone or in steps that mix both kinds of rows.
TEST_F(ServerTest, DeviceDrawnStreamsAreTheSameAloneOrAmongMixedOthers) {
  const std::vector<int32_t> prompt = PromptIds(stub(), "The Fulton County Grand Jury said");
  auto sampled = [&] {
    v1::GenerateRequest r = Greedy(prompt, 20);
    r.set_logprobs(false);
    r.mutable_sampling()->set_temperature(0.9f);
    r.mutable_sampling()->set_top_p(0.95f);
    r.mutable_sampling()->set_seed(7);
    return r;
  }();
  v1::GenerateRequest greedy = Greedy(prompt, 20);
  greedy.set_logprobs(false);
  // Penalties apply on the backend too; with log-probabilities the row is
  // drawn on the host instead, and must give the same tokens.
  v1::GenerateRequest penalised = sampled;
  penalised.mutable_sampling()->set_repetition_penalty(1.3f);
  penalised.mutable_sampling()->set_presence_penalty(0.3f);
  penalised.mutable_sampling()->set_frequency_penalty(0.2f);
  v1::GenerateRequest penalised_on_host = penalised;
  penalised_on_host.set_logprobs(true);
  const auto sampled_alone = Generate(stub(), sampled);
  const auto greedy_alone = Generate(stub(), greedy);
  const auto penalised_alone = Generate(stub(), penalised);
  const auto penalised_host = Generate(stub(), penalised_on_host);
  ASSERT_TRUE(sampled_alone.status.ok() && greedy_alone.status.ok());
  ASSERT_TRUE(penalised_alone.status.ok() && penalised_host.status.ok());
  EXPECT_EQ(penalised_alone.tokens, penalised_host.tokens);
  EXPECT_NE(penalised_alone.tokens, sampled_alone.tokens);  // the penalties bite
  std::vector<Completion> results(32);
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      if (i == 5) return void(results[i] = Generate(stub(), sampled));
      if (i == 11) return void(results[i] = Generate(stub(), greedy));
      if (i == 17) return void(results[i] = Generate(stub(), penalised));
      if (i == 23) return void(results[i] = Generate(stub(), penalised_on_host));
      std::vector<int32_t> p = prompt;
      p.insert(p.begin(), static_cast<int32_t>(100 + i));
      v1::GenerateRequest r = Greedy(p, 16 + i % 7);
      r.set_logprobs(i % 2 == 0);  // host-drawn rows beside device-drawn ones
      if (i % 3 == 0) r.mutable_sampling()->set_temperature(1.0f);
      if (i % 4 == 1) r.mutable_sampling()->set_repetition_penalty(1.2f);
      results[i] = Generate(stub(), r);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& c : results) ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_EQ(results[5].tokens, sampled_alone.tokens);
  EXPECT_EQ(results[11].tokens, greedy_alone.tokens);
  EXPECT_EQ(results[17].tokens, penalised_alone.tokens);
  EXPECT_EQ(results[23].tokens, penalised_alone.tokens);
  EXPECT_NE(sampled_alone.tokens, greedy_alone.tokens);  // the draw is not greedy
}

TEST_F(ServerTest, SessionContinuedTurnByTurnMatchesTheWholeText) {
  const auto a = PromptIds(stub(), "The jury further said in term end presentments that");
  const auto b = PromptIds(stub(), " the City Executive Committee");
  const auto c = PromptIds(stub(), " which had over-all charge of the election");
  auto session = CreateSession(stub(), a);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->tokens(), static_cast<int64_t>(a.size()));
  auto turn1 = Generate(stub(), Greedy(b, 8, session->session_id()));
  ASSERT_TRUE(turn1.status.ok()) << turn1.status.error_message();
  auto turn2 = Generate(stub(), Greedy(c, 8, session->session_id()));
  ASSERT_TRUE(turn2.status.ok());
  EXPECT_EQ(turn2.usage.session_tokens(),
            static_cast<int64_t>(a.size() + b.size() + 8 + c.size() + 8));

  std::vector<int32_t> ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  auto whole1 = Generate(stub(), Greedy(ab, 8));
  EXPECT_EQ(whole1.tokens, turn1.tokens);
  std::vector<int32_t> abc = ab;
  abc.insert(abc.end(), turn1.tokens.begin(), turn1.tokens.end());
  abc.insert(abc.end(), c.begin(), c.end());
  auto whole2 = Generate(stub(), Greedy(abc, 8));
  EXPECT_EQ(whole2.tokens, turn2.tokens);
  // The same computation in another order of pieces: equal to float precision.
  for (size_t i = 0; i < whole2.logprobs.size(); ++i) {
    EXPECT_NEAR(whole2.logprobs[i], turn2.logprobs[i], 1e-3);
  }
}

TEST_F(ServerTest, ForkedSessionContinuesIdenticallyToItsParent) {
  auto parent = CreateSession(stub(), PromptIds(stub(), "Mr. Hartsfield said"));
  ASSERT_TRUE(parent.ok());
  grpc::ClientContext context;
  v1::ForkSessionRequest request;
  request.set_session_id(parent->session_id());
  v1::SessionInfo child;
  ASSERT_TRUE(stub().ForkSession(&context, request, &child).ok());
  EXPECT_NE(child.session_id(), parent->session_id());
  EXPECT_EQ(child.tokens(), parent->tokens());
  const auto more = PromptIds(stub(), " that the");
  auto from_parent = Generate(stub(), Greedy(more, 12, parent->session_id()));
  auto from_child = Generate(stub(), Greedy(more, 12, child.session_id()));
  ASSERT_TRUE(from_parent.status.ok() && from_child.status.ok());
  EXPECT_EQ(from_parent.tokens, from_child.tokens);
  EXPECT_EQ(from_parent.logprobs, from_child.logprobs);
}

TEST_F(ServerTest, ClientChosenSessionIdsAreUsedAndCheckedForClashes) {
  const std::string id = "c0ffee00c0ffee00c0ffee00c0ffee00";
  const auto create = [&](const std::string& session_id, bool with_prompt) {
    grpc::ClientContext context;
    v1::CreateSessionRequest request;
    request.set_session_id(session_id);
    if (with_prompt) request.mutable_prompt()->set_text("The jury said");
    v1::SessionInfo info;
    grpc::Status status = stub().CreateSession(&context, request, &info);
    return std::make_pair(status.error_code(), info.session_id());
  };
  EXPECT_EQ(create(id, false), std::make_pair(grpc::StatusCode::OK, id));
  EXPECT_EQ(create(id, true).first, grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(create("C0FFEE", false).first, grpc::StatusCode::INVALID_ARGUMENT);
  const std::string other = "c0ffee00c0ffee00c0ffee00c0ffee01";
  EXPECT_EQ(create(other, true), std::make_pair(grpc::StatusCode::OK, other));
  EXPECT_TRUE(Generate(stub(), Greedy({5}, 2, other)).status.ok());
}

TEST_F(ServerTest, ChatFeedsOnlyEachNewTurnToOneSession) {
  const auto a = PromptIds(stub(), "The jury said");
  const auto b = PromptIds(stub(), " and the mayor");
  grpc::ClientContext context;
  auto chat = stub().Chat(&context);
  std::vector<std::vector<int32_t>> replies;
  std::string session;
  for (const auto& turn : {a, b}) {
    v1::ChatRequest request;
    for (int32_t t : turn) request.mutable_prompt()->mutable_ids()->add_ids(t);
    request.mutable_stopping()->set_max_tokens(6);
    request.mutable_stopping()->set_ignore_eos(true);
    ASSERT_TRUE(chat->Write(request));
    std::vector<int32_t> reply;
    v1::GenerateResponse m;
    while (chat->Read(&m)) {
      if (!m.session_id().empty()) session = m.session_id();
      reply.insert(reply.end(), m.token_ids().begin(), m.token_ids().end());
      if (m.finished()) {
        EXPECT_EQ(m.usage().prompt_tokens(), static_cast<int>(turn.size()));
        break;
      }
    }
    replies.push_back(reply);
  }
  chat->WritesDone();
  ASSERT_TRUE(chat->Finish().ok());
  ASSERT_FALSE(session.empty());
  // The same turns through a session and Generate.
  auto s = CreateSession(stub(), {});
  ASSERT_TRUE(s.ok());
  auto t1 = Generate(stub(), Greedy(a, 6, s->session_id()));
  auto t2 = Generate(stub(), Greedy(b, 6, s->session_id()));
  EXPECT_EQ(replies[0], t1.tokens);
  EXPECT_EQ(replies[1], t2.tokens);
  // The stream's own session went with it.
  v1::SessionInfo info;
  for (int i = 0; i < 100; ++i) {
    if (GetSession(stub(), session, &info).error_code() == grpc::StatusCode::NOT_FOUND) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(GetSession(stub(), session, &info).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, ScoreGivesTheLogLikelihoodAndLeavesTheSessionUnchanged) {
  const auto text = PromptIds(stub(), "The jury said it did find that many of");
  grpc::ClientContext context;
  v1::ScoreRequest request;
  for (int32_t t : text) request.mutable_prompt()->mutable_ids()->add_ids(t);
  v1::ScoreResponse score;
  ASSERT_TRUE(stub().Score(&context, request, &score).ok());
  ASSERT_EQ(score.scored_tokens(), static_cast<int>(text.size()) - 1);
  double sum = 0.0;
  for (int i = 0; i < score.tokens_size(); ++i) {
    EXPECT_EQ(score.tokens(i).id(), text[i + 1]);
    EXPECT_LT(score.tokens(i).logprob(), 0.0f);
    sum += score.tokens(i).logprob();
  }
  EXPECT_NEAR(score.logprob(), sum, 1e-6 * std::abs(sum));
  EXPECT_NEAR(score.perplexity(), std::exp(-sum / score.scored_tokens()), 1e-6 * score.perplexity());
  // Greedy generation's first token has the logprob Score gives it.
  const std::vector<int32_t> prefix(text.begin(), text.end() - 1);
  auto next = Generate(stub(), Greedy(prefix, 1));
  v1::ScoreRequest both;
  for (int32_t t : prefix) both.mutable_prompt()->mutable_ids()->add_ids(t);
  both.mutable_prompt()->mutable_ids()->add_ids(next.tokens[0]);
  grpc::ClientContext context2;
  v1::ScoreResponse scored;
  ASSERT_TRUE(stub().Score(&context2, both, &scored).ok());
  EXPECT_NEAR(scored.tokens(scored.tokens_size() - 1).logprob(), next.logprobs[0], 1e-4);
  // Scoring as a continuation of a session scores every token, and leaves
  // the session as it was.
  auto session = CreateSession(stub(), {text[0], text[1]});
  ASSERT_TRUE(session.ok());
  v1::ScoreRequest cont;
  cont.set_session_id(session->session_id());
  for (size_t i = 2; i < text.size(); ++i) cont.mutable_prompt()->mutable_ids()->add_ids(text[i]);
  grpc::ClientContext context3;
  v1::ScoreResponse continued;
  ASSERT_TRUE(stub().Score(&context3, cont, &continued).ok());
  ASSERT_EQ(continued.scored_tokens(), static_cast<int>(text.size()) - 2);
  for (int i = 0; i < continued.tokens_size(); ++i) {
    EXPECT_NEAR(continued.tokens(i).logprob(), score.tokens(i + 1).logprob(), 1e-4);
  }
  v1::SessionInfo info;
  ASSERT_TRUE(GetSession(stub(), session->session_id(), &info).ok());
  EXPECT_EQ(info.tokens(), 2);
}

TEST_F(ServerTest, CancellingOrPassingTheDeadlineFreesTheSlot) {
  {
    grpc::ClientContext context;
    auto request = GreedyText("The jury said", 4000);
    auto reader = stub().Generate(&context, request);
    v1::GenerateResponse m;
    ASSERT_TRUE(reader->Read(&m));
    ASSERT_TRUE(reader->Read(&m));
    context.TryCancel();
    while (reader->Read(&m)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    auto c = Collect(*stub().Generate(&context, GreedyText("The jury said", 4000)));
    EXPECT_EQ(c.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_GT(c.tokens.size(), 0u);
  }
  for (int i = 0; i < 200 && (r_.server->engine().inflight() > 0 ||
                              r_.server->metrics().slots_in_use.load() > 0);
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(r_.server->engine().inflight(), 0);
  EXPECT_EQ(r_.server->metrics().slots_in_use.load(), 0);
}

TEST(ServerCancel, ACancelledPromptStaysInTheSessionAndNewSessionsAreNotOrphaned) {
  ServerOptions options = TestOptions();
  options.engine.step_tokens = 64;  // a long prompt takes many steps
  Running r = StartServer(options);
  const auto sessions = [&] {
    return r.server->metrics().sessions_device.load() + r.server->metrics().sessions_host.load() +
           r.server->metrics().sessions_disk.load();
  };
  auto s = CreateSession(*r.stub, {5, 6, 7});
  ASSERT_TRUE(s.ok());
  std::vector<int32_t> prompt(3000);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(10 + i % 5000);
  {
    grpc::ClientContext context;
    auto reader = r.stub->Generate(&context, Greedy(prompt, 4, s->session_id()));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    context.TryCancel();
    Collect(*reader);
  }
  v1::SessionInfo info;
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(GetSession(*r.stub, s->session_id(), &info).ok());
    if (!info.busy()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(info.tokens(), 3 + 3000) << "every token given is held, fed or pending";
  EXPECT_TRUE(Generate(*r.stub, Greedy({9}, 2, s->session_id())).status.ok());

  // A chat stream's own session, cut off before its first token, goes.
  const int64_t before = sessions();
  {
    grpc::ClientContext context;
    auto chat = r.stub->Chat(&context);
    v1::ChatRequest request;
    for (int32_t t : prompt) request.mutable_prompt()->mutable_ids()->add_ids(t);
    ASSERT_TRUE(chat->Write(request));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    context.TryCancel();
    chat->Finish();
  }
  for (int i = 0; i < 200 && (sessions() != before || r.server->engine().inflight() > 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(sessions(), before);
}

TEST(ServerBatching, ALongPromptDoesNotStallTheStreamsAlreadyRunning) {
  ServerOptions options = TestOptions();
  options.engine.step_tokens = 128;  // the prompt below needs ≥ 3000 / 127 steps
  Running r = StartServer(options);
  // A running stream, read on its own thread, timestamps its tokens.
  grpc::ClientContext running_context;
  auto running = r.stub->Generate(&running_context, GreedyText("The jury said", 4000));
  v1::GenerateResponse m;
  ASSERT_TRUE(running->Read(&m));
  std::atomic<bool> stop{false};
  std::mutex mutex;
  std::vector<std::chrono::steady_clock::time_point> arrivals;
  std::thread reader([&] {
    v1::GenerateResponse message;
    while (!stop && running->Read(&message)) {
      std::lock_guard<std::mutex> lock(mutex);
      for (int i = 0; i < message.token_ids_size(); ++i) {
        arrivals.push_back(std::chrono::steady_clock::now());
      }
    }
  });
  // A 3000-token prompt joins; until its first token, the engine runs
  // ≥ 23 steps of prompt pieces, each also decoding the running stream.
  std::vector<int32_t> prompt(3000);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(10 + i % 5000);
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext long_context;
  auto long_reader = r.stub->Generate(&long_context, Greedy(prompt, 1));
  ASSERT_TRUE(long_reader->Read(&m));  // its first (and only) token
  const auto first = std::chrono::steady_clock::now();
  Collect(*long_reader);
  running_context.TryCancel();
  stop = true;
  reader.join();
  running->Finish();
  int during = 0;
  for (const auto& t : arrivals) during += t > start && t < first;
  EXPECT_GE(during, 20) << "the running stream got " << during
                        << " tokens while the long prompt was fed";
}

TEST_F(ServerTest, RequestsOnOneSessionRunOneAfterAnother) {
  const std::vector<int32_t> start = {120, 45, 1033};
  auto s = CreateSession(stub(), start);
  ASSERT_TRUE(s.ok());
  // The first is running (its first token is here) when the second arrives.
  grpc::ClientContext context;
  auto reader = stub().Generate(&context, Greedy({87, 9}, 30, s->session_id()));
  v1::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  Completion second;
  std::thread b([&] { second = Generate(stub(), Greedy({311}, 6, s->session_id())); });
  Completion first = Collect(*reader);
  first.tokens.insert(first.tokens.begin(), m.token_ids().begin(), m.token_ids().end());
  b.join();
  ASSERT_TRUE(first.status.ok() && second.status.ok()) << second.status.error_message();
  // The same two requests, one after the other, on a fresh copy.
  auto t = CreateSession(stub(), start);
  ASSERT_TRUE(t.ok());
  auto first2 = Generate(stub(), Greedy({87, 9}, 30, t->session_id()));
  auto second2 = Generate(stub(), Greedy({311}, 6, t->session_id()));
  EXPECT_EQ(first.tokens, first2.tokens);
  EXPECT_EQ(second.tokens, second2.tokens);
  v1::SessionInfo info;
  ASSERT_TRUE(GetSession(stub(), s->session_id(), &info).ok());
  EXPECT_EQ(info.tokens(), 3 + 2 + 30 + 1 + 6);
}

// A Score naming a session that is mid-turn waits for the turn, and scores
// the state the turn leaves (every token the session holds), not a state
// half written.
TEST_F(ServerTest, ScoringABusySessionWaitsForItsTurn) {
  auto s = CreateSession(stub(), {5, 6});
  ASSERT_TRUE(s.ok());
  const std::vector<int32_t> text = {11, 12, 13};
  grpc::ClientContext context;
  auto reader = stub().Generate(&context, Greedy({7}, 400, s->session_id()));
  v1::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));  // the turn is running (for a few hundred ms)
  grpc::ClientContext score_context;
  v1::ScoreRequest request;
  request.set_session_id(s->session_id());
  for (int32_t t : text) request.mutable_prompt()->mutable_ids()->add_ids(t);
  v1::ScoreResponse during;
  ASSERT_TRUE(stub().Score(&score_context, request, &during).ok());
  const Completion turn = Collect(*reader);
  ASSERT_TRUE(turn.status.ok());
  EXPECT_EQ(turn.reason, v1::FINISH_REASON_LENGTH) << "the turn ran to its end";
  // The same score once the session is idle: the same figures.
  grpc::ClientContext after_context;
  v1::ScoreResponse after;
  ASSERT_TRUE(stub().Score(&after_context, request, &after).ok());
  EXPECT_EQ(during.scored_tokens(), after.scored_tokens());
  EXPECT_EQ(during.logprob(), after.logprob());
}

// A unary call whose client has gone (deadline) stops at the next step, as a
// stream does: it holds no slot and no compute for the rest of its prompt.
TEST_F(ServerTest, AScoreOrPrefillWhoseDeadlinePassedStopsAtTheNextStep) {
  std::vector<int32_t> text(60000);
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<int32_t>(5 + i % 4000);
  for (const char* method : {"Score", "CreateSession"}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
    grpc::Status status;
    if (std::string(method) == "Score") {
      v1::ScoreRequest request;
      for (int32_t t : text) request.mutable_prompt()->mutable_ids()->add_ids(t);
      v1::ScoreResponse response;
      status = stub().Score(&context, request, &response);
    } else {
      v1::CreateSessionRequest request;
      for (int32_t t : text) request.mutable_prompt()->mutable_ids()->add_ids(t);
      v1::SessionInfo response;
      status = stub().CreateSession(&context, request, &response);
    }
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << method;
    // Feeding 60,000 tokens takes seconds here; stopped, it is gone at once.
    const auto since = std::chrono::steady_clock::now();
    while (r_.server->engine().inflight() > 0 &&
           std::chrono::steady_clock::now() - since < std::chrono::seconds(1)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(r_.server->engine().inflight(), 0) << method << " still runs";
  }
}

// A request cut off in its prompt leaves the rest pending in its session:
// a later score takes them as context, not as its own tokens, and they count
// against --max_prompt_tokens, so that they cannot pile up.
TEST_F(ServerTest, WhatACutOffPromptLeftIsContextAndCountsAsPrompt) {
  std::vector<int32_t> text(20000);
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<int32_t>(5 + i % 4000);
  auto s = CreateSession(stub(), {5, 6});
  ASSERT_TRUE(s.ok());
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
    auto reader = stub().Generate(&context, Greedy(text, 1, s->session_id()));
    EXPECT_EQ(Collect(*reader).status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  v1::SessionInfo info;
  for (int i = 0; i < 200 && (!GetSession(stub(), s->session_id(), &info).ok() || info.busy()); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(info.tokens(), 2 + static_cast<int64_t>(text.size()));  // all seen, some unfed
  // The same context, wholly fed.
  std::vector<int32_t> whole = {5, 6};
  whole.insert(whole.end(), text.begin(), text.end());
  auto fed = CreateSession(stub(), whole);
  ASSERT_TRUE(fed.ok());
  std::vector<v1::ScoreResponse> scores(2);
  for (int k = 0; k < 2; ++k) {
    grpc::ClientContext context;
    v1::ScoreRequest request;
    request.set_session_id(k == 0 ? s->session_id() : fed->session_id());
    request.mutable_prompt()->mutable_ids()->add_ids(7);
    request.mutable_prompt()->mutable_ids()->add_ids(8);
    ASSERT_TRUE(stub().Score(&context, request, &scores[k]).ok());
  }
  ASSERT_EQ(scores[0].scored_tokens(), 2);
  ASSERT_EQ(scores[1].scored_tokens(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(scores[0].tokens(i).id(), 7 + i);
    EXPECT_NEAR(scores[0].tokens(i).logprob(), scores[1].tokens(i).logprob(), 1e-5);
  }
  std::vector<int32_t> long_prompt(50000, 9);
  const auto refused = Generate(stub(), Greedy(long_prompt, 1, s->session_id()));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("left unfed"));
}

TEST_F(ServerTest, DeletingABusySessionCancelsItsRequest) {
  auto s = CreateSession(stub(), {5, 6});
  ASSERT_TRUE(s.ok());
  grpc::ClientContext context;
  auto reader = stub().Generate(&context, Greedy({7}, 4000, s->session_id()));
  v1::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  grpc::ClientContext del;
  v1::DeleteSessionRequest request;
  request.set_session_id(s->session_id());
  v1::DeleteSessionResponse response;
  ASSERT_TRUE(stub().DeleteSession(&del, request, &response).ok());
  auto rest = Collect(*reader);
  EXPECT_EQ(rest.reason, v1::FINISH_REASON_CANCELLED);
  v1::SessionInfo info;
  EXPECT_EQ(GetSession(stub(), s->session_id(), &info).error_code(), grpc::StatusCode::NOT_FOUND);
  for (int i = 0; i < 200 && r_.server->engine().inflight() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(r_.server->engine().inflight(), 0);
}

TEST_F(ServerTest, EveryInvalidInputGetsInvalidArgumentNamingTheField) {
  const auto expect_invalid = [&](v1::GenerateRequest request, const std::string& field) {
    auto c = Generate(stub(), request);
    EXPECT_EQ(c.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_THAT(c.status.error_message(), HasSubstr(field));
  };
  expect_invalid(v1::GenerateRequest(), "prompt");
  expect_invalid(GreedyText("", 4), "prompt.text");
  expect_invalid(Greedy({1, 99999}, 4), "vocabulary");
  expect_invalid(Greedy({1, -3}, 4), "vocabulary");
  expect_invalid(GreedyText("x", 0), "max_tokens");
  expect_invalid(GreedyText("x", -5), "max_tokens");
  expect_invalid(GreedyText("x", 100000), "max_tokens");
  auto r = GreedyText("x", 4);
  r.mutable_sampling()->set_top_p(0.0f);
  expect_invalid(r, "top_p");
  r.mutable_sampling()->set_top_p(1.5f);
  expect_invalid(r, "top_p");
  r = GreedyText("x", 4);
  r.mutable_sampling()->set_temperature(-0.5f);
  expect_invalid(r, "temperature");
  r = GreedyText("x", 4);
  r.mutable_sampling()->set_min_p(1.0f);
  expect_invalid(r, "min_p");
  r = GreedyText("x", 4);
  r.mutable_sampling()->set_top_k(-1);
  expect_invalid(r, "top_k");
  r = GreedyText("x", 4);
  r.mutable_sampling()->set_presence_penalty(3.0f);
  expect_invalid(r, "presence_penalty");
  r = GreedyText("x", 4);
  for (int i = 0; i < 17; ++i) r.mutable_stopping()->add_stop("s" + std::to_string(i));
  expect_invalid(r, "stopping.stop");
  r = GreedyText("x", 4);
  r.mutable_stopping()->add_stop("");
  expect_invalid(r, "stopping.stop[0]");
  r = GreedyText("x", 4);
  r.set_top_logprobs(50);
  expect_invalid(r, "top_logprobs");
  r = GreedyText(std::string(5 << 20, 'a'), 4);
  auto big = Generate(stub(), r);
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(big.status.error_message(), HasSubstr("max_request_bytes"));
  r = GreedyText("x", 4);
  r.set_session_id("not-a-session");
  expect_invalid(r, "session_id");
  r.set_session_id("0123456789abcdef0123456789abcdef");
  auto unknown = Generate(stub(), r);
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(unknown.status.error_message(), HasSubstr("0123456789abcdef0123456789abcdef"));
  // And the server goes on serving.
  EXPECT_TRUE(Generate(stub(), GreedyText("The jury said", 2)).status.ok());
}

TEST_F(ServerTest, ModelInfoTokenizeAndDetokenize) {
  grpc::ClientContext context;
  v1::ModelInfoResponse info;
  ASSERT_TRUE(stub().ModelInfo(&context, v1::ModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.vocab_size(), 8192);
  EXPECT_EQ(info.state_bytes(), 524288);
  EXPECT_EQ(info.backend(), TestOptions().backend);
  EXPECT_GT(info.parameters(), 5000000);
  EXPECT_THAT(info.config_json(), HasSubstr("\"update\""));
  EXPECT_EQ(info.fingerprint().size(), 16u);
  const auto ids = PromptIds(stub(), "Hello, wide world");
  grpc::ClientContext context2;
  v1::DetokenizeRequest request;
  for (int32_t id : ids) request.add_ids(id);
  v1::DetokenizeResponse text;
  ASSERT_TRUE(stub().Detokenize(&context2, request, &text).ok());
  EXPECT_EQ(text.text(), "Hello, wide world");
  grpc::ClientContext context3;
  request.add_ids(70000);
  EXPECT_EQ(stub().Detokenize(&context3, request, &text).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

// ---- Tiers, snapshots, restarts --------------------------------------------

// Creates two sessions on `stub`, pushes them out of the pool with traffic on
// other sessions, and returns their continuations (tokens and logprobs).
struct TierRun {
  std::vector<Completion> continuations;
  std::vector<v1::Tier> tiers_before;
};

TierRun RunWithPressure(Running& r, bool pressure) {
  TierRun out;
  const auto a = PromptIds(*r.stub, "The jury said it did find");
  const auto b = PromptIds(*r.stub, "In the election, the mayor");
  auto s1 = CreateSession(*r.stub, a);
  auto s2 = CreateSession(*r.stub, b);
  EXPECT_TRUE(s1.ok() && s2.ok());
  auto g1 = Generate(*r.stub, Greedy(PromptIds(*r.stub, " that"), 5, s1->session_id()));
  auto g2 = Generate(*r.stub, Greedy(PromptIds(*r.stub, " who"), 5, s2->session_id()));
  EXPECT_TRUE(g1.status.ok() && g2.status.ok());
  if (pressure) {
    for (int i = 0; i < 4; ++i) {
      auto other = CreateSession(*r.stub, {static_cast<int32_t>(300 + i)});
      EXPECT_TRUE(other.ok());
      EXPECT_TRUE(Generate(*r.stub, Greedy({77}, 3, other->session_id())).status.ok());
    }
  }
  for (const auto* s : {&*s1, &*s2}) {
    v1::SessionInfo info;
    EXPECT_TRUE(GetSession(*r.stub, s->session_id(), &info).ok());
    out.tiers_before.push_back(info.tier());
  }
  out.continuations.push_back(
      Generate(*r.stub, Greedy(PromptIds(*r.stub, " the county"), 12, s1->session_id())));
  out.continuations.push_back(
      Generate(*r.stub, Greedy(PromptIds(*r.stub, " the county"), 12, s2->session_id())));
  return out;
}

// `options` with one slot and no host memory for parked sessions: a session
// another's turn pushes out of the slot goes straight to `snapshot_dir`.
ServerOptions ParkingOnDisk(ServerOptions options, const std::string& snapshot_dir) {
  options.engine.slots = 1;
  options.engine.host_bytes = 0;
  options.engine.snapshot_dir = snapshot_dir;
  return options;
}

TEST(ServerTiers, SessionsParkedToHostAndDiskContinueBitIdentically) {
  Running roomy = StartServer(TestOptions());
  const TierRun reference = RunWithPressure(roomy, /*pressure=*/false);
  EXPECT_EQ(reference.tiers_before[0], v1::TIER_DEVICE);

  TempDir dir;
  ServerOptions tight = TestOptions();
  tight.engine.slots = 2;
  tight.engine.host_bytes = 524288;  // one parked session in host memory
  tight.engine.snapshot_dir = dir.path();
  Running r = StartServer(tight);
  const TierRun parked = RunWithPressure(r, /*pressure=*/true);
  EXPECT_THAT(parked.tiers_before, ::testing::UnorderedElementsAre(v1::TIER_DISK, v1::TIER_DISK))
      << "both sessions pushed past the pool and host memory";
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(parked.continuations[i].status.ok());
    EXPECT_EQ(parked.continuations[i].tokens, reference.continuations[i].tokens);
    EXPECT_EQ(parked.continuations[i].logprobs, reference.continuations[i].logprobs);
  }
  EXPECT_GT(r.server->metrics().evictions.load(), 0u);
  EXPECT_GT(r.server->metrics().spills.load(), 0u);
  EXPECT_GT(r.server->metrics().restores.load(), 0u);

  // Host tier alone (no snapshot dir): sessions wait in host memory.
  ServerOptions host_only = TestOptions();
  host_only.engine.slots = 2;
  Running h = StartServer(host_only);
  const TierRun hosted = RunWithPressure(h, /*pressure=*/true);
  EXPECT_THAT(hosted.tiers_before, ::testing::Each(v1::TIER_HOST));
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(hosted.continuations[i].logprobs, reference.continuations[i].logprobs);
  }
}

// The disk refuses a spill (here its folder is gone; full or failing in
// life): the session stays in memory, continues bit-identically, is counted,
// and is written at shutdown once the disk takes it again.
TEST(ServerTiers, ASpillTheDiskRefusesKeepsTheSessionInMemory) {
  Running roomy = StartServer(TestOptions());
  const auto prompt = PromptIds(*roomy.stub, "The jury said it did find");
  const auto more = PromptIds(*roomy.stub, " the county");
  auto ref = CreateSession(*roomy.stub, prompt);
  ASSERT_TRUE(ref.ok());
  const Completion reference = Generate(*roomy.stub, Greedy(more, 12, ref->session_id()));
  ASSERT_TRUE(reference.status.ok());

  TempDir dir;
  const std::string snapshots = dir.path() + "/snapshots";
  std::filesystem::create_directories(snapshots);
  Running r = StartServer(ParkingOnDisk(TestOptions(), snapshots));
  auto a = CreateSession(*r.stub, prompt);
  ASSERT_TRUE(a.ok());
  std::filesystem::rename(snapshots, dir.path() + "/away");
  auto b = CreateSession(*r.stub, {5, 6});  // takes the slot: a is spilled
  ASSERT_TRUE(b.ok());
  v1::SessionInfo info;
  ASSERT_TRUE(GetSession(*r.stub, a->session_id(), &info).ok());
  EXPECT_EQ(info.tier(), v1::TIER_DISK);
  for (int i = 0; i < 200 && r.server->metrics().snapshot_write_failures.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the writer thread's
  }
  EXPECT_GE(r.server->metrics().snapshot_write_failures.load(), 1u);
  // Back from memory, exactly as it left.
  const Completion cont = Generate(*r.stub, Greedy(more, 12, a->session_id()));
  ASSERT_TRUE(cont.status.ok()) << cont.status.error_message();
  EXPECT_EQ(cont.tokens, reference.tokens);
  EXPECT_EQ(cont.logprobs, reference.logprobs);
  // b's spill was refused too: sessions in memory beyond --host_bytes (0
  // here) stop new ones, naming the disk.
  for (int i = 0; i < 200 && r.server->metrics().snapshot_write_failures.load() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto c = CreateSession(*r.stub, {7});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c.status().message(), HasSubstr("refuses their snapshots"));
  // The disk is back: the drain writes what it could not.
  std::filesystem::rename(dir.path() + "/away", snapshots);
  r.server->Shutdown(std::chrono::milliseconds(100));
  for (const auto& id : {a->session_id(), b->session_id()}) {
    EXPECT_TRUE(std::filesystem::exists(snapshots + "/" + id + ".fwps")) << id;
  }
}

// --snapshot_every_turn, two replicas on one directory: a session that
// replica A holds, continued on B meanwhile (A was cut off from the
// balancer), continues on A from B's turn, not from A's older copy.
TEST(ServerTiers, AReplicaDropsItsCopyOfASessionAnotherReplicaContinued) {
  TempDir dir;
  ServerOptions options = TestOptions();
  options.engine.snapshot_dir = dir.path();
  options.engine.snapshot_every_turn = true;
  Running a = StartServer(options);
  Running b = StartServer(options);
  Running alone = StartServer(TestOptions());  // the same turns on one server
  std::string on_two, on_one;
  const std::vector<std::vector<int32_t>> turns = {{5, 6, 7}, {8}, {9, 10}};
  for (size_t t = 0; t < turns.size(); ++t) {
    v1::Fwp::Stub& replica = t == 1 ? *b.stub : *a.stub;  // A, then B, then A again
    auto request = Greedy(turns[t], 4, on_two);
    request.set_keep_session(on_two.empty());
    const Completion two = Generate(replica, request);
    ASSERT_TRUE(two.status.ok()) << t << ": " << two.status.error_message();
    on_two = two.session_id;
    auto single = Greedy(turns[t], 4, on_one);
    single.set_keep_session(on_one.empty());
    const Completion one = Generate(*alone.stub, single);
    ASSERT_TRUE(one.status.ok());
    on_one = one.session_id;
    EXPECT_EQ(two.tokens, one.tokens) << "turn " << t;
    EXPECT_EQ(two.logprobs, one.logprobs) << "turn " << t;
  }
  v1::SessionInfo info, reference;
  ASSERT_TRUE(GetSession(*a.stub, on_two, &info).ok());
  ASSERT_TRUE(GetSession(*alone.stub, on_one, &reference).ok());
  EXPECT_EQ(info.tokens(), reference.tokens());
  EXPECT_GE(a.server->metrics().stale_copies.load(), 1u);
}

// The same, when replica A's copy leaves memory before it is asked for
// again: its spill must not write A's older state over B's turn (B would
// then continue from it).
TEST(ServerTiers, AReplicaDoesNotSpillItsStaleCopyOverAnotherReplicasTurn) {
  TempDir dir;
  ServerOptions options = TestOptions();
  options.engine.snapshot_dir = dir.path();
  options.engine.snapshot_every_turn = true;
  Running a = StartServer(ParkingOnDisk(options, dir.path()));
  Running b = StartServer(options);
  Running alone = StartServer(TestOptions());
  std::string on_two, on_one;
  auto turn = [&](v1::Fwp::Stub& replica, const std::vector<int32_t>& prompt) {
    auto request = Greedy(prompt, 4, on_two);
    request.set_keep_session(on_two.empty());
    const Completion two = Generate(replica, request);
    EXPECT_TRUE(two.status.ok()) << two.status.error_message();
    on_two = two.session_id;
    auto single = Greedy(prompt, 4, on_one);
    single.set_keep_session(on_one.empty());
    const Completion one = Generate(*alone.stub, single);
    on_one = one.session_id;
    EXPECT_EQ(two.tokens, one.tokens);
    EXPECT_EQ(two.logprobs, one.logprobs);
  };
  turn(*a.stub, {5, 6, 7});
  turn(*b.stub, {8});
  ASSERT_TRUE(Generate(*a.stub, Greedy({11}, 2)).status.ok());  // A's copy is spilled
  turn(*b.stub, {9, 10});
  turn(*a.stub, {12});
  EXPECT_GE(a.server->metrics().stale_copies.load(), 1u);
}

// The drain writes every session to --snapshot_dir but a chat stream's own,
// which dies with the stream the drain ends (a kept one is written).
TEST(ServerTiers, AChatsOwnSessionIsNotWrittenAtShutdown) {
  TempDir dir;
  ServerOptions options = TestOptions();
  options.engine.snapshot_dir = dir.path();
  Running r = StartServer(options);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<v1::ChatRequest, v1::GenerateResponse>>>
      chats;
  std::vector<std::string> ids;
  for (bool keep : {false, true}) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    chats.push_back(r.stub->Chat(contexts.back().get()));
    v1::ChatRequest request;
    request.mutable_prompt()->mutable_ids()->add_ids(5);
    request.mutable_stopping()->set_max_tokens(2);
    request.set_keep_session(keep);
    ASSERT_TRUE(chats.back()->Write(request));
    v1::GenerateResponse m;
    std::string id;
    while (chats.back()->Read(&m)) {
      if (!m.session_id().empty()) id = m.session_id();
      if (m.finished()) break;
    }
    ASSERT_FALSE(id.empty());
    ids.push_back(id);
  }
  // The drain, with the chats still open (the release at their end is a
  // message that a stopping engine may never read).
  r.server->engine().Drain(std::chrono::milliseconds(0));
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/" + ids[0] + ".fwps"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/" + ids[1] + ".fwps"));
  r.server->Shutdown(std::chrono::milliseconds(0));
  for (auto& chat : chats) chat->Finish();
}

// A spilled session whose file another replica removed (a delete, its TTL)
// is NOT_FOUND, not DATA_LOSS (which names a corrupt or foreign file).
TEST(ServerTiers, ASpilledSessionWhoseFileWasRemovedIsNotFound) {
  TempDir dir;
  Running r = StartServer(ParkingOnDisk(TestOptions(), dir.path()));
  auto a = CreateSession(*r.stub, {5, 6});
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(CreateSession(*r.stub, {7}).ok());  // a is spilled
  const std::string file = dir.path() + "/" + a->session_id() + ".fwps";
  for (int i = 0; i < 200 && !std::filesystem::exists(file); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(std::filesystem::remove(file));
  const Completion c = Generate(*r.stub, Greedy({8}, 2, a->session_id()));
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::NOT_FOUND) << c.status.error_message();
}

// --session_ttl_s: a session not asked for in that long is deleted, one in
// use is kept, and a snapshot file that old which no session here holds (an
// earlier run's) is removed.
TEST(ServerTiers, SessionsUnusedForTheirTtlAreDeletedWithOldSnapshots) {
  TempDir dir;
  ServerOptions options = TestOptions();
  options.engine.snapshot_dir = dir.path();
  std::string earlier;
  {
    Running r = StartServer(options);
    auto s = CreateSession(*r.stub, {5, 6});
    ASSERT_TRUE(s.ok());
    earlier = s->session_id();
    r.server->Shutdown(std::chrono::milliseconds(0));  // written to the directory
  }
  const std::string earlier_file = dir.path() + "/" + earlier + ".fwps";
  ASSERT_TRUE(std::filesystem::exists(earlier_file));
  // What a crashed write leaves (an hour old; one being written; not ours).
  const auto hour_ago =
      std::filesystem::file_time_type::clock::now() - std::chrono::hours(1);
  const std::string crashed = dir.path() + "/abc.fwps.tmp.999";
  const std::string writing = dir.path() + "/def.fwps.tmp.998";
  const std::string other = dir.path() + "/notes.txt";
  for (const auto& path : {crashed, writing, other}) std::ofstream(path) << "x";
  std::filesystem::last_write_time(crashed, hour_ago);
  std::filesystem::last_write_time(other, hour_ago);
  options.engine.session_ttl_s = 0.6;
  Running r = StartServer(options);
  auto kept = CreateSession(*r.stub, {7});
  auto idle = CreateSession(*r.stub, {8});
  ASSERT_TRUE(kept.ok() && idle.ok());
  v1::SessionInfo info;
  for (int i = 0; i < 12; ++i) {  // 1.8 s, the kept one asked for every 150 ms
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    ASSERT_TRUE(GetSession(*r.stub, kept->session_id(), &info).ok()) << i;
  }
  EXPECT_EQ(GetSession(*r.stub, idle->session_id(), &info).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(std::filesystem::exists(earlier_file));
  EXPECT_GE(r.server->metrics().expired_sessions.load(), 2u);
  EXPECT_FALSE(std::filesystem::exists(crashed));
  EXPECT_TRUE(std::filesystem::exists(writing));
  EXPECT_TRUE(std::filesystem::exists(other));
}

// A snapshot file's time is its session's last use, also when the drain
// writes it: a restart does not make idle sessions young again.
TEST(ServerTiers, ASnapshotFileKeepsItsSessionsLastUse) {
  TempDir dir;
  ServerOptions options = TestOptions();
  options.engine.snapshot_dir = dir.path();
  options.engine.session_ttl_s = 3600;
  Running r = StartServer(options);
  auto s = CreateSession(*r.stub, {5, 6});
  ASSERT_TRUE(s.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  r.server->Shutdown(std::chrono::milliseconds(0));  // written to the directory now
  const std::string file = dir.path() + "/" + s->session_id() + ".fwps";
  ASSERT_TRUE(std::filesystem::exists(file));
  const auto age =
      std::filesystem::file_time_type::clock::now() - std::filesystem::last_write_time(file);
  EXPECT_GE(age, std::chrono::milliseconds(700));
  EXPECT_LT(age, std::chrono::seconds(60));
}

// Two replicas share a snapshot directory: a session that one holds on disk
// and is asked for keeps its file, though the other replica, which does not
// hold it, expires files by their age (the holder marks the file as used).
TEST(ServerTiers, ASessionInUseOnOneReplicaKeepsItsFileFromTheOthersTtl) {
  for (bool every_turn : {false, true}) {
    SCOPED_TRACE(every_turn ? "--snapshot_every_turn" : "spilled only");
    TempDir dir;
    ServerOptions options = ParkingOnDisk(TestOptions(), dir.path());
    options.engine.session_ttl_s = 0.6;
    options.engine.snapshot_every_turn = every_turn;
    Running holder = StartServer(options);
    Running other = StartServer(options);
    auto s = CreateSession(*holder.stub, {5, 6});
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(CreateSession(*holder.stub, {7}).ok());  // s is spilled to its file
    const std::string file = dir.path() + "/" + s->session_id() + ".fwps";
    for (int i = 0; i < 200 && !std::filesystem::exists(file); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(std::filesystem::exists(file));
    v1::SessionInfo info;
    for (int i = 0; i < 12; ++i) {  // 1.8 s, asked for every 150 ms
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
      ASSERT_TRUE(GetSession(*holder.stub, s->session_id(), &info).ok()) << i;
      EXPECT_EQ(info.tier(), v1::TIER_DISK);
    }
    EXPECT_TRUE(std::filesystem::exists(file)) << "the other replica took it for abandoned";
  }
}

TEST(ServerTiers, ZeroSlotsSizesThePoolFromFreeMemory) {
  ServerOptions options = TestOptions();
  options.engine.slots = 0;
  Running r = StartServer(options);
  ASSERT_NE(r.server, nullptr);
  const int slots = r.server->engine().options().slots;
  EXPECT_GE(slots, 1);
  EXPECT_LE(slots, 4096);
  grpc::ClientContext context;
  v1::ModelInfoResponse info;
  ASSERT_TRUE(r.stub->ModelInfo(&context, v1::ModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.state_slots(), slots);
}

TEST(ServerTiers, FullStoreWithoutDiskRefusesNewSessions) {
  ServerOptions options = TestOptions();
  options.engine.slots = 1;
  options.engine.host_bytes = 524288;
  Running r = StartServer(options);
  ASSERT_TRUE(CreateSession(*r.stub, {5}).ok());
  ASSERT_TRUE(CreateSession(*r.stub, {6}).ok());
  auto third = CreateSession(*r.stub, {7});
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("snapshot_dir"));
}

TEST(ServerRestart, ResumesSnapshottedSessionsAndRefusesCorruptOrForeignOnes) {
  TempDir dir;
  const std::vector<int32_t> prompt = {120, 45, 1033, 87, 9, 311};
  // What a server that never stops gives.
  Running steady = StartServer(TestOptions());
  auto s0 = CreateSession(*steady.stub, prompt);
  auto first0 = Generate(*steady.stub, Greedy({50, 60}, 6, s0->session_id()));
  auto second0 = Generate(*steady.stub, Greedy({70}, 10, s0->session_id()));

  ServerOptions options = TestOptions();
  options.engine.snapshot_dir = dir.path();
  std::string id;
  {
    Running r = StartServer(options);
    auto s = CreateSession(*r.stub, prompt);
    ASSERT_TRUE(s.ok());
    id = s->session_id();
    auto first = Generate(*r.stub, Greedy({50, 60}, 6, id));
    EXPECT_EQ(first.tokens, first0.tokens);
    r.server->Shutdown(std::chrono::milliseconds(1000));  // writes the snapshot
  }
  std::string saved;  // the snapshot file (it goes when the session is loaded)
  {
    std::ifstream in(dir.path() + "/" + id + ".fwps", std::ios::binary);
    ASSERT_TRUE(in.good());
    saved.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  Running r = StartServer(options);
  v1::SessionInfo info;
  ASSERT_TRUE(GetSession(*r.stub, id, &info).ok());
  EXPECT_EQ(info.tier(), v1::TIER_DISK);
  EXPECT_EQ(info.tokens(), static_cast<int64_t>(prompt.size() + 2 + 6));
  auto second = Generate(*r.stub, Greedy({70}, 10, id));
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.tokens, second0.tokens);
  EXPECT_EQ(second.logprobs, second0.logprobs);

  // A corrupt snapshot: one flipped byte in the state.
  const std::string corrupt = "00000000000000000000000000000001";
  {
    std::string bytes = saved;
    bytes.replace(64, 32, corrupt);  // its id, so the file names it
    bytes[bytes.size() - 100] ^= 0x40;
    std::ofstream(dir.path() + "/" + corrupt + ".fwps", std::ios::binary) << bytes;
  }
  auto bad = Generate(*r.stub, Greedy({70}, 4, corrupt));
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(bad.status.error_message(), HasSubstr("checksum"));
  // A snapshot from another model.
  const std::string foreign = "00000000000000000000000000000002";
  SessionSnapshot snapshot;
  snapshot.session_id = foreign;
  snapshot.state.assign(524288, 0);
  ASSERT_TRUE(WriteSnapshot(dir.path() + "/" + foreign + ".fwps", snapshot, 12345).ok());
  auto alien = Generate(*r.stub, Greedy({70}, 4, foreign));
  EXPECT_EQ(alien.status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(alien.status.error_message(), HasSubstr("another model"));
  // A well-formed snapshot whose pending token is outside the vocabulary.
  const std::string outside = "00000000000000000000000000000003";
  snapshot.session_id = outside;
  snapshot.pending = {99999};
  ASSERT_TRUE(WriteSnapshot(dir.path() + "/" + outside + ".fwps", snapshot,
                            ModelFingerprint(DefaultModelDir()).value())
                  .ok());
  auto strange = Generate(*r.stub, Greedy({70}, 4, outside));
  EXPECT_EQ(strange.status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(strange.status.error_message(), HasSubstr("pending tokens token 0 is 99999"));
  // Made under --auth_tokens_file by "alice", served without it: no owners.
  const std::string owned = "00000000000000000000000000000007";
  snapshot.session_id = owned;
  snapshot.pending = {70};
  snapshot.owner = "alice";
  ASSERT_TRUE(WriteSnapshot(dir.path() + "/" + owned + ".fwps", snapshot,
                            ModelFingerprint(DefaultModelDir()).value())
                  .ok());
  EXPECT_TRUE(GetSession(*r.stub, owned, &info).ok());
  // Paths that are not snapshot files: a directory, a FIFO (which must not
  // block the engine thread: a deadline bounds the call) and a sparse file
  // larger than any snapshot of this model (refused before it is read).
  const std::string directory = "00000000000000000000000000000004";
  const std::string fifo = "00000000000000000000000000000005";
  const std::string huge = "00000000000000000000000000000006";
  std::filesystem::create_directory(dir.path() + "/" + directory + ".fwps");
  ASSERT_EQ(mkfifo((dir.path() + "/" + fifo + ".fwps").c_str(), 0600), 0);
  {
    std::ofstream(dir.path() + "/" + huge + ".fwps", std::ios::binary) << saved.substr(0, 64);
    std::filesystem::resize_file(dir.path() + "/" + huge + ".fwps", int64_t{1} << 31);
  }
  for (const auto& [bad_id, why] : {std::pair{directory, "not a regular file"},
                                    std::pair{fifo, "not a regular file"},
                                    std::pair{huge, "more than a snapshot of this model"}}) {
    v1::SessionInfo unused;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::GetSessionRequest get;
    get.set_session_id(bad_id);
    const grpc::Status status = r.stub->GetSession(&context, get, &unused);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS) << bad_id;
    EXPECT_THAT(status.error_message(), HasSubstr(why)) << bad_id;
  }
  // An unreadable snapshot belongs to no one: deleting it removes the file.
  for (const std::string& gone : {corrupt, huge}) {
    grpc::ClientContext context;
    v1::DeleteSessionRequest del;
    del.set_session_id(gone);
    v1::DeleteSessionResponse unused;
    EXPECT_TRUE(r.stub->DeleteSession(&context, del, &unused).ok()) << gone;
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/" + gone + ".fwps")) << gone;
  }
  // The server keeps serving.
  EXPECT_TRUE(Generate(*r.stub, Greedy({70}, 2)).status.ok());
}

TEST(ServerStart, RefusesPortsOutOfRangeAndAPortInUse) {
  ServerOptions options = TestOptions();
  options.address = "127.0.0.1:99999";
  auto bad = Server::Start(options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--address"));
  options.address = "127.0.0.1:0";
  options.metrics_port = 70000;
  bad = Server::Start(options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--metrics_port"));
  options.metrics_port = -1;
  options.service.max_request_bytes = -5;
  bad = Server::Start(options);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--max_request_bytes"));
  // A second server on the first one's ports fails instead of sharing them.
  ServerOptions first = TestOptions();
  first.metrics_port = 0;
  Running r = StartServer(first);
  ASSERT_NE(r.server, nullptr);
  ServerOptions second = TestOptions();
  second.address = "127.0.0.1:" + std::to_string(r.server->port());
  EXPECT_FALSE(Server::Start(second).ok());
  second.address = "127.0.0.1:0";
  second.metrics_address = "0.0.0.0";
  second.metrics_port = r.server->metrics_port();
  auto metrics_clash = Server::Start(second);
  EXPECT_FALSE(metrics_clash.ok());
  EXPECT_THAT(std::string(metrics_clash.status().message()), HasSubstr("metrics"));
}

// ---- Overload, drain, health, auth, metrics --------------------------------

TEST(ServerLimits, OverloadGivesResourceExhausted) {
  ServerOptions options = TestOptions();
  options.engine.slots = 1;
  options.engine.max_requests = 2;
  options.engine.max_queue = 1;
  Running r = StartServer(options);
  grpc::ClientContext c1, c2;
  auto long1 = r.stub->Generate(&c1, GreedyText("The jury", 4000));
  v1::GenerateResponse m;
  ASSERT_TRUE(long1->Read(&m));  // running
  auto long2 = r.stub->Generate(&c2, GreedyText("The jury", 4000));  // queued
  for (int i = 0; i < 200 && r.server->engine().inflight() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto third = Generate(*r.stub, GreedyText("The jury", 4));
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.status.error_message(), HasSubstr("max_requests"));
  c1.TryCancel();
  c2.TryCancel();
  Collect(*long1);
  Collect(*long2);
}

// A stream whose client reads nothing pauses; its state leaves the slot for
// a request that needs one, and comes back when the stream is read: the
// paused stream's tokens are those it makes alone, bit for bit. Also with
// penalties kept in the device's table, where the borrower, penalised too,
// fills the same slot's row meanwhile.
TEST(ServerLimits, APausedStreamLendsItsSlotAndContinuesExactly) {
  for (bool penalised : {false, true}) {
    SCOPED_TRACE(penalised ? "penalties in the table" : "log-probabilities");
    ServerOptions options = TestOptions();
    options.engine.slots = 1;
    options.engine.stream_buffer = 2;
    Running r = StartServer(options);
    auto job = [&] {
      Engine::GenerateJob g;
      g.prompt = {5, 6, 7};
      g.params.max_tokens = 40;
      g.params.ignore_eos = true;
      g.params.logprobs = !penalised;
      if (penalised) {
        g.params.repetition_penalty = 1.5f;
        g.params.presence_penalty = 0.7f;
      }
      g.out = std::make_shared<Stream>();
      return g;
    };
    auto drain = [](Stream& out) {
      std::vector<int32_t> tokens;
      std::vector<float> logprobs;
      Event last;
      while (!last.finished) {
        if (auto e = out.Pop()) {
          tokens.insert(tokens.end(), e->tokens.begin(), e->tokens.end());
          for (const auto& l : e->logprobs) logprobs.push_back(l.logprob);
          last = std::move(*e);
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      }
      EXPECT_TRUE(last.status.ok()) << last.status;
      return std::make_pair(tokens, logprobs);
    };
    Engine::GenerateJob alone = job();
    ASSERT_TRUE(r.server->engine().Submit(alone).ok());
    const auto reference = drain(*alone.out);
    ASSERT_EQ(reference.first.size(), 40u);

    Engine::GenerateJob paused = job();  // not read for now
    ASSERT_TRUE(r.server->engine().Submit(paused).ok());
    while (paused.out->buffered() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const uint64_t evictions = r.server->metrics().evictions.load();
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto borrower = Greedy({8, 9, 8, 9}, 12);
    if (penalised) {
      borrower.set_logprobs(false);
      borrower.mutable_sampling()->set_repetition_penalty(1.2f);
      borrower.mutable_sampling()->set_presence_penalty(0.5f);
    }
    auto reader = r.stub->Generate(&context, borrower);
    const Completion waited = Collect(*reader);
    ASSERT_TRUE(waited.status.ok()) << waited.status.error_message();
    EXPECT_EQ(waited.tokens.size(), 12u);
    EXPECT_GT(r.server->metrics().evictions.load(), evictions);
    const auto continued = drain(*paused.out);
    EXPECT_EQ(continued.first, reference.first);
    EXPECT_EQ(continued.second, reference.second);
  }
}

TEST(ServerLimits, HealthIsServingThenNotServingWhileDraining) {
  Running r = StartServer(TestOptions());
  auto health = grpc::health::v1::Health::NewStub(r.channel);
  const auto check = [&] {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_TRUE(health->Check(&context, grpc::health::v1::HealthCheckRequest(), &response).ok());
    return response.status();
  };
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::SERVING);
  // A long stream keeps the drain waiting for its grace period.
  grpc::ClientContext context;
  auto stream = r.stub->Generate(&context, GreedyText("The jury", 4000));
  v1::GenerateResponse m;
  ASSERT_TRUE(stream->Read(&m));
  std::thread drain([&] { r.server->Shutdown(std::chrono::milliseconds(1500)); });
  while (!r.server->engine().draining()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  auto refused = Generate(*r.stub, GreedyText("The jury", 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  // Cut off when the grace period ends: UNAVAILABLE, as for the refused
  // call (clients and load balancers take it elsewhere).
  auto rest = Collect(*stream);
  EXPECT_EQ(rest.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(rest.status.error_message(), HasSubstr("draining"));
  drain.join();
}

// A turn's snapshot the disk refuses is not acknowledged: with
// --snapshot_every_turn the request fails, naming why, and the session
// (in memory) goes on.
TEST(ServerLimits, ATurnThatCannotBeSavedIsNotAcknowledged) {
  TempDir dir;
  const std::string snapshots = dir.path() + "/snapshots";
  std::filesystem::create_directories(snapshots);
  ServerOptions options = TestOptions();
  options.engine.snapshot_dir = snapshots;
  options.engine.snapshot_every_turn = true;
  Running r = StartServer(options);
  auto request = GreedyText("The jury", 3);
  request.set_keep_session(true);
  const Completion saved = Generate(*r.stub, request);
  ASSERT_TRUE(saved.status.ok()) << saved.status.error_message();
  EXPECT_TRUE(std::filesystem::exists(snapshots + "/" + saved.session_id + ".fwps"));
  std::filesystem::remove_all(snapshots);
  auto next = Greedy({77}, 3, saved.session_id);
  const Completion unsaved = Generate(*r.stub, next);
  EXPECT_EQ(unsaved.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(unsaved.status.error_message(), HasSubstr("could not be saved"));
  EXPECT_GE(r.server->metrics().snapshot_write_failures.load(), 1u);
  // A session made with a prompt that could not be saved is not kept (its
  // client is told the error, not the id); its id is free again.
  const std::string chosen = "00112233445566778899aabbccddeeff";
  auto create = [&] {
    grpc::ClientContext context;
    v1::CreateSessionRequest request;
    request.set_session_id(chosen);
    request.mutable_prompt()->set_text("The jury");
    v1::SessionInfo info;
    return r.stub->CreateSession(&context, request, &info);
  };
  const grpc::Status lost = create();
  EXPECT_EQ(lost.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(lost.error_message(), HasSubstr("not kept"));
  v1::SessionInfo info;
  for (int i = 0; i < 100 && GetSession(*r.stub, chosen, &info).ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(GetSession(*r.stub, chosen, &info).error_code(), grpc::StatusCode::NOT_FOUND);
  std::filesystem::create_directories(snapshots);
  EXPECT_TRUE(create().ok());
  EXPECT_TRUE(Generate(*r.stub, next).status.ok());
  EXPECT_TRUE(std::filesystem::exists(snapshots + "/" + saved.session_id + ".fwps"));
}

TEST(ServerAuth, BearerTokensGateCallsAndSessions) {
  TempDir dir;
  const std::string file = dir.path() + "/tokens";
  std::ofstream(file) << "# name token\nalice alice-secret-0123456789\nbob bob-secret-0123456789\n";
  ServerOptions options = TestOptions();
  options.auth_tokens_file = file;
  Running r = StartServer(options);
  EXPECT_EQ(Generate(*r.stub, GreedyText("The jury", 2)).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Generate(*r.stub, GreedyText("The jury", 2), "wrong-token-0123456789").status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto request = GreedyText("The jury", 2);
  request.set_keep_session(true);
  auto alice = Generate(*r.stub, request, "alice-secret-0123456789");
  ASSERT_TRUE(alice.status.ok());
  ASSERT_FALSE(alice.session_id.empty());
  auto cont = GreedyText(" said", 2);
  cont.set_session_id(alice.session_id);
  EXPECT_TRUE(Generate(*r.stub, cont, "alice-secret-0123456789").status.ok());
  EXPECT_EQ(Generate(*r.stub, cont, "bob-secret-0123456789").status.error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST(ServerMetrics, PrometheusEndpointReportsRequestsAndLatencies) {
  ServerOptions options = TestOptions();
  options.metrics_port = 0;
  Running r = StartServer(options);
  ASSERT_TRUE(Generate(*r.stub, GreedyText("The jury", 3)).status.ok());
  EXPECT_EQ(Generate(*r.stub, GreedyText("", 3)).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  httplib::Client http("127.0.0.1", r.server->metrics_port());
  // A call is counted when gRPC is done with it, just after the client has
  // its answer: scrape until both are in.
  std::string body;
  for (int i = 0; i < 100; ++i) {
    auto response = http.Get("/metrics");
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 200);
    body = response->body;
    if (body.find("code=\"OK\"} 1") != std::string::npos &&
        body.find("code=\"INVALID_ARGUMENT\"} 1") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_THAT(body, HasSubstr("fwp_requests_total{method=\"Generate\",code=\"OK\"} 1"));
  EXPECT_THAT(body, HasSubstr("fwp_requests_total{method=\"Generate\",code=\"INVALID_ARGUMENT\"} 1"));
  EXPECT_THAT(body, HasSubstr("fwp_generated_tokens_total 3"));
  EXPECT_THAT(body, HasSubstr("fwp_time_to_first_token_seconds_count 1"));
  EXPECT_THAT(body, HasSubstr("fwp_inter_token_latency_seconds_count 2"));
  EXPECT_THAT(body, HasSubstr("fwp_sessions{tier=\"device\"}"));
  EXPECT_THAT(body, HasSubstr("fwp_state_slots 16"));
}

// ---- EOS --------------------------------------------------------------------

// A small model whose every next token is the tokenizer's EOS: final norm
// γ = 0, β = 1 and an output row of ones for EOS only.
std::string WriteEosModel(const std::string& dir) {
  auto config = Config::FromJson(R"({"vocab_size": 8192, "d_model": 32, "n_layers": 1,
      "n_heads": 2, "d_head": 16, "d_ff": 64, "update": "delta",
      "feature_map": {"kind": "dpfp", "nu": 1}, "sum_norm": true, "positions": "none",
      "tied_embeddings": false, "activation": "relu", "norm_eps": 1e-5})");
  EXPECT_TRUE(config.ok()) << config.status();
  HostWeights weights = RandomWeights(*config, 7);
  std::fill(weights["final_norm.weight"].begin(), weights["final_norm.weight"].end(), 0.0f);
  std::fill(weights["final_norm.bias"].begin(), weights["final_norm.bias"].end(), 1.0f);
  auto& head = weights["lm_head.weight"];
  std::fill(head.begin(), head.end(), 0.0f);
  const int eos = 2;  // the default tokenizer's
  std::fill(head.begin() + eos * 32, head.begin() + (eos + 1) * 32, 1.0f);
  EXPECT_TRUE(WriteModelDir(dir, *config, weights, DefaultModelDir() + "/tokenizer.model").ok());
  return dir;
}

TEST(ServerEos, EndOfSequenceFinishesUnlessIgnored) {
  TempDir dir;
  Running r = StartServer(TestOptions(WriteEosModel(dir.path())));
  v1::GenerateRequest request;
  request.mutable_prompt()->set_text("The jury");
  request.mutable_stopping()->set_max_tokens(5);
  auto c = Generate(*r.stub, request);
  ASSERT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_EQ(c.reason, v1::FINISH_REASON_EOS);
  EXPECT_EQ(c.tokens, std::vector<int32_t>({2}));
  request.mutable_stopping()->set_ignore_eos(true);
  c = Generate(*r.stub, request);
  EXPECT_EQ(c.reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(5, 2));
  request.mutable_stopping()->add_stop_token_ids(2);
  c = Generate(*r.stub, request);
  EXPECT_EQ(c.reason, v1::FINISH_REASON_STOP);
  EXPECT_EQ(c.tokens.size(), 1u);
}

}  // namespace
}  // namespace fwp::server::testing
