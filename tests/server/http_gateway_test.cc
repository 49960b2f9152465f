// The HTTP/JSON gateway end to end: an in-process fwp-server with
// --http_port, driven by an HTTP client, against the same server's gRPC
// answers.
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "nlohmann/json.hpp"
#include "tests/server/server_fixture.h"

namespace fwp::server {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;
using testing::Running;
using testing::StartServer;
using testing::TestOptions;

class HttpGatewayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options = TestOptions();
    options.http_port = 0;
    r_ = StartServer(options);
    ASSERT_NE(r_.server, nullptr);
    ASSERT_GT(r_.server->http_port(), 0);
  }
  httplib::Client Http() {
    httplib::Client http("127.0.0.1", r_.server->http_port());
    http.set_read_timeout(60, 0);
    return http;
  }
  // The lines of an NDJSON (or the events of an SSE) body.
  static std::vector<json> Lines(const std::string& body, const std::string& prefix = "") {
    std::vector<json> out;
    std::istringstream in(body);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      if (!prefix.empty()) {
        if (line.rfind(prefix, 0) != 0) continue;
        line = line.substr(prefix.size());
        if (line == "[DONE]") {
          out.push_back("[DONE]");
          continue;
        }
      }
      out.push_back(json::parse(line));
    }
    return out;
  }
  Running r_;
};

// The tokens of a stream's lines, and its last line.
std::vector<int32_t> Tokens(const std::vector<json>& lines) {
  std::vector<int32_t> tokens;
  for (const json& l : lines) {
    if (l.contains("token_ids")) {
      for (const json& t : l["token_ids"]) tokens.push_back(t.get<int32_t>());
    }
  }
  return tokens;
}

TEST_F(HttpGatewayTest, GenerateStreamsTheSameTokensAsGrpc) {
  auto request = testing::GreedyText("The jury said", 12);
  request.set_logprobs(true);
  const auto grpc = testing::Generate(*r_.stub, request);
  ASSERT_TRUE(grpc.status.ok());
  ASSERT_EQ(grpc.logprobs.size(), 12u);
  auto http = Http();
  const auto res = http.Post(
      "/v1/generate",
      R"({"prompt": {"text": "The jury said"}, "stopping": {"max_tokens": 12, "ignore_eos": true},
          "logprobs": true})",
      "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/x-ndjson");
  const auto lines = Lines(res->body);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(Tokens(lines), grpc.tokens);
  const json& last = lines.back();
  EXPECT_TRUE(last["finished"].get<bool>());
  EXPECT_EQ(last["finish_reason"], "FINISH_REASON_LENGTH");
  EXPECT_EQ(last["usage"]["generated_tokens"], 12);
  std::string text;
  std::vector<float> logprobs;
  for (const json& l : lines) {
    text += l.value("text", "");
    for (const json& lp : l.value("logprobs", json::array())) logprobs.push_back(lp["logprob"]);
  }
  EXPECT_EQ(text, grpc.text);
  EXPECT_EQ(logprobs, grpc.logprobs);  // the same bits, through JSON's shortest round trip
}

TEST_F(HttpGatewayTest, ErrorsHaveTheirHttpStatusAndNameWhatIsWrong) {
  auto http = Http();
  const auto error = [&](const httplib::Result& res, int status, const std::string& why) {
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, status) << res->body;
    const json body = json::parse(res->body);
    EXPECT_EQ(body["error"]["code"], status);
    EXPECT_THAT(body["error"]["message"].get<std::string>(), HasSubstr(why)) << res->body;
  };
  error(http.Post("/v1/generate", "{not json", "application/json"), 400,
        "not a fwp.v1.GenerateRequest in JSON");
  error(http.Post("/v1/generate", R"({"prompt": {"text": "a"}, "temprature": 1})",
                  "application/json"),
        400, "temprature");
  error(http.Post("/v1/generate",
                  R"({"prompt": {"text": "a"}, "sampling": {"temperature": -1}})",
                  "application/json"),
        400, "temperature");
  error(http.Get("/v1/sessions/0123456789abcdef0123456789abcdef"), 404, "0123456789abcdef");
  error(http.Get("/v1/sessions/nothex"), 400, "32 lowercase hex digits");
  httplib::Headers timeout = {{"X-Timeout-Ms", "soon"}};
  error(http.Post("/v1/generate", timeout, R"({"prompt": {"text": "a"}})", "application/json"),
        400, "X-Timeout-Ms");
  // A header gRPC would refuse (it aborts the process on non-printable
  // metadata): %ff arrives as the byte 0xff.
  error(http.Post("/v1/generate", httplib::Headers{{"x-session-id", "%ff"}},
                  R"({"prompt": {"text": "a"}})", "application/json"),
        400, "printable ASCII");
  error(http.Get("/v1/model", httplib::Headers{{"authorization", "Bearer \ttab"}}), 400,
        "printable ASCII");
  // The server goes on serving.
  const auto ok = http.Post("/v1/tokenize", R"({"text": "The jury"})", "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
}

TEST_F(HttpGatewayTest, SessionsTokenizeScoreAndModelInfo) {
  auto http = Http();
  const auto tok = http.Post("/v1/tokenize", R"({"text": "The jury said"})", "application/json");
  ASSERT_TRUE(tok && tok->status == 200);
  const json ids = json::parse(tok->body)["ids"];
  ASSERT_GE(ids.size(), 2u);
  const auto detok = http.Post("/v1/detokenize", json{{"ids", ids}}.dump(), "application/json");
  ASSERT_TRUE(detok && detok->status == 200);
  EXPECT_EQ(json::parse(detok->body)["text"], "The jury said");

  const auto created = http.Post(
      "/v1/sessions", json{{"prompt", {{"ids", {{"ids", ids}}}}}}.dump(), "application/json");
  ASSERT_TRUE(created && created->status == 200) << (created ? created->body : "");
  const std::string id = json::parse(created->body)["session_id"];
  ASSERT_EQ(id.size(), 32u);
  const auto info = http.Get("/v1/sessions/" + id);
  ASSERT_TRUE(info && info->status == 200);
  EXPECT_EQ(json::parse(info->body)["tokens"], std::to_string(ids.size()));  // int64: a string
  const auto fork = http.Post("/v1/sessions/" + id + "/fork", "", "application/json");
  ASSERT_TRUE(fork && fork->status == 200) << (fork ? fork->body : "");
  const std::string copy = json::parse(fork->body)["session_id"];
  EXPECT_NE(copy, id);
  // The fork continues as the session does.
  const auto next = [&](const std::string& session) {
    const auto res = http.Post("/v1/generate",
                               json{{"prompt", {{"text", " that"}}},
                                    {"session_id", session},
                                    {"stopping", {{"max_tokens", 6}, {"ignore_eos", true}}}}
                                   .dump(),
                               "application/json");
    EXPECT_TRUE(res && res->status == 200);
    return Tokens(Lines(res->body));
  };
  EXPECT_EQ(next(id), next(copy));
  const auto deleted = http.Delete("/v1/sessions/" + copy);
  ASSERT_TRUE(deleted && deleted->status == 200);
  const auto gone = http.Get("/v1/sessions/" + copy);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->status, 404);

  const auto score = http.Post("/v1/score", json{{"prompt", {{"ids", {{"ids", ids}}}}}}.dump(),
                               "application/json");
  ASSERT_TRUE(score && score->status == 200) << (score ? score->body : "");
  EXPECT_EQ(json::parse(score->body)["scored_tokens"], ids.size() - 1);
  const auto model = http.Get("/v1/model");
  ASSERT_TRUE(model && model->status == 200);
  EXPECT_EQ(json::parse(model->body)["vocab_size"], 8192);
  const auto health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "SERVING\n");
}

TEST_F(HttpGatewayTest, CompletionsAnswerAsOpenAIDoesWholeOrStreamed) {
  const auto grpc = testing::Generate(*r_.stub, testing::GreedyText("The jury said", 10));
  ASSERT_TRUE(grpc.status.ok());
  auto http = Http();
  const std::string request =
      R"({"model": "default", "prompt": "The jury said", "max_tokens": 10, "temperature": 0,
          "ignore_eos": true)";
  const auto whole = http.Post("/v1/completions", request + "}", "application/json");
  ASSERT_TRUE(whole && whole->status == 200) << (whole ? whole->body : "");
  const json answer = json::parse(whole->body);
  EXPECT_EQ(answer["object"], "text_completion");
  EXPECT_EQ(answer["model"], "default");
  EXPECT_THAT(answer["id"].get<std::string>(), ::testing::StartsWith("cmpl-"));
  EXPECT_EQ(answer["choices"][0]["text"], grpc.text);
  EXPECT_EQ(answer["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(answer["usage"]["completion_tokens"], 10);
  EXPECT_EQ(answer["usage"]["total_tokens"], answer["usage"]["prompt_tokens"].get<int>() + 10);

  const auto streamed = http.Post(
      "/v1/completions", request + R"(, "stream": true, "stream_options": {"include_usage": true}})",
      "application/json");
  ASSERT_TRUE(streamed && streamed->status == 200);
  EXPECT_EQ(streamed->get_header_value("Content-Type"), "text/event-stream");
  const auto events = Lines(streamed->body, "data: ");
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    text += events[i]["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, grpc.text);
  EXPECT_EQ(events[events.size() - 3]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events[events.size() - 2]["usage"]["completion_tokens"], 10);

  const auto models = http.Get("/v1/models");
  ASSERT_TRUE(models && models->status == 200);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "default");
  for (const auto& [body, why] : std::vector<std::pair<std::string, std::string>>{
           {R"({"prompt": "a", "n": 2})", "'n' must be 1"},
           {R"({"prompt": "a", "logprobs": 3})", "/v1/generate"},
           {R"({"prompt": 7})", "'prompt' must be"},
           {R"({"max_tokens": 3})", "'prompt' is required"},
           {R"({"prompt": "a", "frobnicate": 1})", "unknown field 'frobnicate'"},
           {R"({"prompt": "a", "temperature": -2})", "temperature"}}) {
    const auto res = http.Post("/v1/completions", body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << body;
    EXPECT_THAT(res->body, HasSubstr(why)) << body;
  }
}

// A client that stops reading a long stream cancels its request: the slot
// is free again long before the 4,000 tokens would have been made. So does
// one that hangs up on a whole (not streamed) completion, which is sent a
// space a token until its answer.
TEST_F(HttpGatewayTest, AClientThatGoesAwayCancelsItsRequest) {
  const std::vector<std::pair<std::string, std::string>> calls = {
      {"/v1/generate",
       R"({"prompt": {"text": "The jury"}, "stopping": {"max_tokens": 4000, "ignore_eos": true}})"},
      {"/v1/completions",
       R"({"prompt": "The jury", "max_tokens": 4000, "ignore_eos": true})"}};
  uint64_t generated = 0;
  for (const auto& [path, body] : calls) {
    auto http = Http();
    size_t got = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.set_header("Content-Type", "application/json");
    req.body = body;
    req.content_receiver = [&](const char*, size_t n, uint64_t, uint64_t) {
      got += n;
      return got < 20;  // a few lines (or spaces), then hang up
    };
    EXPECT_FALSE(http.send(req)) << path;  // the client cancelled it
    http.stop();
    const auto since = std::chrono::steady_clock::now();
    while (r_.server->engine().inflight() > 0 &&
           std::chrono::steady_clock::now() - since < std::chrono::seconds(3)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(r_.server->engine().inflight(), 0) << path;
    const uint64_t now = r_.server->metrics().generated_tokens.load();
    EXPECT_LT(now - generated, 4000u) << path;
    generated = now;
  }
}

// So does a client that hangs up on a long unary call (a score, a session
// made with a long prompt): the work stops at the next step, not seconds
// later at the end.
TEST_F(HttpGatewayTest, AClientThatHangsUpOnALongCallCancelsIt) {
  json ids = json::array();
  for (int i = 0; i < 60000; ++i) ids.push_back(5 + i % 4000);
  json body;
  body["prompt"]["ids"]["ids"] = ids;
  for (const char* path : {"/v1/score", "/v1/sessions"}) {
    {
      httplib::Client http("127.0.0.1", r_.server->http_port());
      http.set_read_timeout(0, 300000);  // gives up after 0.3 s and hangs up
      const auto res = http.Post(path, body.dump(), "application/json");
      EXPECT_FALSE(res) << path << " answered: " << (res ? res->body : "");
    }
    const auto since = std::chrono::steady_clock::now();
    while (r_.server->engine().inflight() > 0 &&
           std::chrono::steady_clock::now() - since < std::chrono::seconds(1)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(r_.server->engine().inflight(), 0) << path << " still runs";
    while (r_.server->engine().inflight() > 0) {  // the next call starts clean
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

// The API may take all workers but a few: one more call is told 429 at
// once, and /healthz still answers.
TEST(HttpGateway, CallsBeyondItsWorkersAreRefusedAndHealthStillAnswers) {
  ServerOptions options = TestOptions();
  options.http_port = 0;
  options.http_threads = 2;  // one for the API, one kept for /healthz
  Running r = StartServer(options);
  ASSERT_NE(r.server, nullptr);
  std::thread stream([&] {
    httplib::Client http("127.0.0.1", r.server->http_port());
    http.set_read_timeout(60, 0);
    (void)http.Post("/v1/generate",
                    R"({"prompt": {"text": "a"}, "stopping": {"max_tokens": 600, "ignore_eos": true}})",
                    "application/json");
  });
  while (r.server->engine().inflight() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  httplib::Client http("127.0.0.1", r.server->http_port());
  const auto refused = http.Post("/v1/tokenize", R"({"text": "a"})", "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 429) << refused->body;
  EXPECT_THAT(refused->body, HasSubstr("--http_threads"));
  const auto health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  stream.join();
  // The worker is free once the server is done with the stream's response,
  // just after its client has the last byte.
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    const auto after = http.Post("/v1/tokenize", R"({"text": "a"})", "application/json");
    ASSERT_TRUE(after);
    status = after->status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status, 200);
}

// A stream the drain cuts off ends with its error line, not a truncated
// body: the gateway stops only after its responses are written.
TEST(HttpGateway, AStreamCutByTheDrainEndsWithItsErrorLine) {
  ServerOptions options = TestOptions();
  options.http_port = 0;
  Running r = StartServer(options);
  ASSERT_NE(r.server, nullptr);
  std::string body;
  std::thread stream([&] {
    httplib::Client http("127.0.0.1", r.server->http_port());
    http.set_read_timeout(60, 0);
    const auto res = http.Post(
        "/v1/generate",
        R"({"prompt": {"text": "a"}, "stopping": {"max_tokens": 4000, "ignore_eos": true}})",
        "application/json");
    if (res) body = res->body;
  });
  while (r.server->metrics().generated_tokens.load() < 5) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.server->Shutdown(std::chrono::milliseconds(0));
  stream.join();
  ASSERT_FALSE(body.empty());
  const std::string last = body.substr(body.rfind('\n', body.size() - 2) + 1);
  const json error = json::parse(last);
  EXPECT_EQ(error["error"]["status"], "UNAVAILABLE") << last;
}

TEST(HttpGateway, AuthIsTheGrpcServicesAndHealthTurnsAtTheDrain) {
  testing::TempDir dir;
  const std::string file = dir.path() + "/tokens";
  std::ofstream(file) << "alice alice-secret-0123456789\n";
  ServerOptions options = TestOptions();
  options.http_port = 0;
  options.auth_tokens_file = file;
  Running r = StartServer(options);
  ASSERT_NE(r.server, nullptr);
  httplib::Client http("127.0.0.1", r.server->http_port());
  const std::string body = R"({"prompt": {"text": "a"}, "stopping": {"max_tokens": 2}})";
  const auto refused = http.Post("/v1/generate", body, "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  const auto allowed = http.Post(
      "/v1/generate", httplib::Headers{{"Authorization", "Bearer alice-secret-0123456789"}}, body,
      "application/json");
  ASSERT_TRUE(allowed);
  EXPECT_EQ(allowed->status, 200) << allowed->body;
  r.server->Shutdown(std::chrono::milliseconds(0));
  EXPECT_FALSE(http.Get("/healthz"));  // stopped with the server
}

}  // namespace
}  // namespace fwp::server
