// End-to-end helpers: an in-process fwp-server (the real Server: engine,
// gRPC services, health) on a loopback port, and small synchronous client
// calls over a real channel.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "fwp/v1/fwp.grpc.pb.h"
#include "kernels/backend.h"
#include "server/server.h"

namespace fwp::server::testing {

inline std::string DefaultModelDir() { return std::string(FWP_SOURCE_DIR) + "/models/default"; }

inline ServerOptions TestOptions(const std::string& model_dir = DefaultModelDir()) {
  ServerOptions options;
  options.model_dir = model_dir;
  // FWP_TEST_BACKEND=cuda runs the server tests on the GPU (or on the
  // emulated one, tools/cuda_emulation).
  const char* backend = std::getenv("FWP_TEST_BACKEND");
  options.backend = backend && *backend ? backend : "cpu";
  options.address = "127.0.0.1:0";
  options.metrics_port = -1;
  options.engine.slots = 16;
  return options;
}

// Why the backend FWP_TEST_BACKEND asks for cannot start here ("" when it
// can): the very check each test's server start makes.
inline std::string TestBackendMissing() {
  auto backend = MakeBackend(TestOptions().backend);
  return backend.ok() ? "" : std::string(backend.status().message());
}

// Skips every test of the binary, saying why, when FWP_TEST_BACKEND=cuda
// finds no GPU to run on (each test would fail at its server's start).
class TestBackendEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (const std::string why = TestBackendMissing(); !why.empty()) {
      GTEST_SKIP() << "FWP_TEST_BACKEND=" << TestOptions().backend << ": " << why;
    }
  }
};

struct Running {
  std::unique_ptr<Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Fwp::Stub> stub;
};

inline Running StartServer(const ServerOptions& options) {
  Running r;
  auto server = Server::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return r;
  r.server = std::move(*server);
  r.channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(r.server->port()),
                                  grpc::InsecureChannelCredentials());
  r.stub = v1::Fwp::NewStub(r.channel);
  return r;
}

struct Completion {
  grpc::Status status;
  std::vector<v1::GenerateResponse> messages;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::string text;
  std::string session_id;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
};

inline Completion Collect(grpc::ClientReaderInterface<v1::GenerateResponse>& reader) {
  Completion c;
  v1::GenerateResponse m;
  while (reader.Read(&m)) {
    c.messages.push_back(m);
    for (int32_t t : m.token_ids()) c.tokens.push_back(t);
    for (const auto& lp : m.logprobs()) c.logprobs.push_back(lp.logprob());
    c.text += m.text();
    if (!m.session_id().empty()) c.session_id = m.session_id();
    if (m.finished()) {
      c.reason = m.finish_reason();
      c.usage = m.usage();
    }
  }
  c.status = reader.Finish();
  return c;
}

inline Completion Generate(v1::Fwp::Stub& stub, const v1::GenerateRequest& request,
                           const std::string& token = "") {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  auto reader = stub.Generate(&context, request);
  return Collect(*reader);
}

inline v1::GenerateRequest Greedy(const std::vector<int32_t>& ids, int max_tokens,
                                  const std::string& session = "") {
  v1::GenerateRequest r;
  for (int32_t id : ids) r.mutable_prompt()->mutable_ids()->add_ids(id);
  r.mutable_stopping()->set_max_tokens(max_tokens);
  r.mutable_stopping()->set_ignore_eos(true);
  r.set_session_id(session);
  r.set_logprobs(true);
  return r;
}

inline v1::GenerateRequest GreedyText(const std::string& text, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text(text);
  r.mutable_stopping()->set_max_tokens(max_tokens);
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

inline absl::StatusOr<v1::SessionInfo> CreateSession(v1::Fwp::Stub& stub,
                                                     const std::vector<int32_t>& ids) {
  grpc::ClientContext context;
  v1::CreateSessionRequest request;
  for (int32_t id : ids) request.mutable_prompt()->mutable_ids()->add_ids(id);
  v1::SessionInfo info;
  grpc::Status status = stub.CreateSession(&context, request, &info);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return info;
}

inline grpc::Status GetSession(v1::Fwp::Stub& stub, const std::string& id, v1::SessionInfo* info) {
  grpc::ClientContext context;
  v1::GetSessionRequest request;
  request.set_session_id(id);
  return stub.GetSession(&context, request, info);
}

// A scratch directory, removed afterwards.
class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("fwp-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

}  // namespace fwp::server::testing
