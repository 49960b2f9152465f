// The gRPC front door: fwp.v1.Fwp on the callback API. Handlers
// authenticate, validate, convert requests to native structs and hand them
// to the Engine; they never touch the model or the device. Streams are
// written one message at a time as the engine produces them.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "fwp/v1/fwp.grpc.pb.h"
#include "model/tokenizer.h"
#include "server/engine.h"
#include "server/metrics.h"

namespace fwp::server {

struct ServiceOptions {
  int32_t default_max_tokens = 256;
  int64_t max_request_bytes = 4 << 20;
  // Bearer token → principal name; empty: no authentication.
  std::map<std::string, std::string> tokens;
};

// What ModelInfo reports.
struct ModelDescription {
  std::string config_json;
  int64_t parameters = 0;
  std::string backend;
  std::string fingerprint;
  std::string replica;
};

class FwpService final : public fwp::v1::Fwp::CallbackService {
 public:
  FwpService(const ServiceOptions& options, Engine& engine, const Tokenizer& tokenizer,
             int32_t vocab, ModelDescription description, Metrics& metrics);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerBidiReactor<v1::ChatRequest, v1::GenerateResponse>* Chat(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const v1::CreateSessionRequest* request,
                                          v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* ForkSession(grpc::CallbackServerContext* context,
                                        const v1::ForkSessionRequest* request,
                                        v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const v1::DeleteSessionRequest* request,
                                          v1::DeleteSessionResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfo(grpc::CallbackServerContext* context,
                                      const v1::ModelInfoRequest* request,
                                      v1::ModelInfoResponse* response) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) override;

  // Shared by the stream reactors (service.cc).
  absl::StatusOr<std::string> Authenticate(const grpc::CallbackServerContext& context) const;
  absl::StatusOr<std::vector<int32_t>> PromptTokens(const v1::Prompt& prompt,
                                                    const char* field) const;
  absl::StatusOr<GenerationParams> Params(const v1::SamplingParams& sampling,
                                          const v1::StoppingParams& stopping, bool logprobs,
                                          int32_t top_logprobs) const;
  absl::Status CheckSize(const google::protobuf::Message& request) const;
  Engine& engine() { return engine_; }
  Metrics& metrics() { return metrics_; }

 private:
  // Runs `body` (which returns the status) and finishes the unary call.
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const char* method,
                                  absl::Status status);

  ServiceOptions options_;
  Engine& engine_;
  const Tokenizer& tokenizer_;
  int32_t vocab_;
  ModelDescription description_;
  Metrics& metrics_;
};

grpc::Status ToGrpc(const absl::Status& status);
std::string GrpcCodeName(grpc::StatusCode code);  // "INVALID_ARGUMENT", ...

}  // namespace fwp::server
