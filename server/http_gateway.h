// fwp-server's HTTP/JSON gateway (--http_port): the fwp.v1.Fwp calls as JSON
// over HTTP/1.1, for curl, browsers and clients without gRPC, and an
// OpenAI-style /v1/completions for the clients written against that API.
//
// It calls the server's own gRPC service over an in-process channel, so a
// request through it is validated, authenticated (the Authorization header
// is passed on), limited, counted and answered exactly as over gRPC — the
// same tokens, bit for bit.
//
//   POST   /v1/generate              GenerateRequest → GenerateResponse lines
//                                    (application/x-ndjson, one per message)
//   POST   /v1/score                 ScoreRequest → ScoreResponse
//   POST   /v1/tokenize              TokenizeRequest → TokenizeResponse
//   POST   /v1/detokenize            DetokenizeRequest → DetokenizeResponse
//   POST   /v1/sessions              CreateSessionRequest → SessionInfo
//   GET    /v1/sessions/{id}         → SessionInfo
//   DELETE /v1/sessions/{id}         → {}
//   POST   /v1/sessions/{id}/fork    → SessionInfo (the copy)
//   GET    /v1/model                 → ModelInfoResponse
//   GET    /healthz                  200 SERVING, 503 otherwise (draining)
//   POST   /v1/completions           OpenAI completions (stream: server-sent
//                                    events); GET /v1/models lists the model
//
// Bodies are the messages' proto3 JSON (field names as in fwp.proto or in
// lowerCamelCase; an unknown field is refused). An error is an HTTP status
// (the gRPC code's usual mapping: 400 INVALID_ARGUMENT, 404 NOT_FOUND, 429
// RESOURCE_EXHAUSTED, 503 UNAVAILABLE, ...) with
//   {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "..."}};
// an error after a stream has begun is its last line (or event). A client
// that goes away mid-stream cancels its request (its slot is freed at the
// next step); a whole (not streamed) completion is sent a space a message
// until its answer for the same reason, and a long unary call (a score, a
// session's prompt) watches its connection. X-Timeout-Ms sets a call's
// deadline.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace fwp::server {

struct HttpGatewayOptions {
  std::string address = "0.0.0.0";
  int port = 0;                      // 0: pick a free one
  int threads = 64;                  // connections served at once (a stream holds one)
  int64_t max_body_bytes = 32 << 20;  // largest request body
  std::string model_name = "fwp";    // /v1/models, and "model" in completions
};

class HttpGateway {
 public:
  // Serves `channel` (the server's in-process channel) until destroyed.
  static absl::StatusOr<std::unique_ptr<HttpGateway>> Start(
      std::shared_ptr<grpc::Channel> channel, const HttpGatewayOptions& options);
  ~HttpGateway();

  int port() const;
  // Stops listening and waits for the connections being served. Idempotent.
  void Stop();

 private:
  struct Impl;
  HttpGateway() = default;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fwp::server
