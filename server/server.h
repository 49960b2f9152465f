// fwp-server as a library: loads a model directory onto a backend, starts
// the engine, the gRPC server (fwp.v1.Fwp, grpc.health.v1, reflection) and
// the Prometheus endpoint and (--http_port) the HTTP/JSON gateway. main.cc adds flags and signals; the end-to-end
// tests run it in-process over a real loopback channel.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/engine.h"
#include "server/service.h"

namespace fwp::server {

struct ServerOptions {
  std::string model_dir = "models/default";
  std::string backend = "auto";          // auto | cpu | cuda | cuda:N
  std::string address = "127.0.0.1:50051";  // port 0: pick a free one
  int metrics_port = -1;                 // -1: off; 0: pick a free one
  std::string metrics_address = "0.0.0.0";
  int http_port = -1;                    // the HTTP/JSON gateway; -1: off; 0: pick a free one
  std::string http_address = "0.0.0.0";
  int http_threads = 64;                 // HTTP connections served at once
  std::string tls_cert;                  // PEM files; both or neither
  std::string tls_key;
  std::string auth_tokens_file;          // lines "name token"; empty: no auth
  std::string replica_name;              // reported by ModelInfo (default: the host name)
  EngineOptions engine;
  ServiceOptions service;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  int http_port() const;  // 0 without the gateway
  Engine& engine() { return *engine_; }
  Metrics& metrics() { return metrics_; }
  const std::string& backend_name() const;

  // Graceful shutdown: health NOT_SERVING, refuse new work, let running
  // requests finish for up to `grace`, cancel the rest, snapshot sessions
  // (with a snapshot dir), stop the gRPC server. Idempotent.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  Server() = default;

  std::unique_ptr<Impl> impl_;
  Metrics metrics_;
  std::unique_ptr<Engine> engine_;
  int port_ = 0;
  int metrics_port_ = 0;
  bool shut_down_ = false;
};

// Reads an auth tokens file: one "name token" pair per line, '#' comments.
absl::StatusOr<std::map<std::string, std::string>> ReadAuthTokens(const std::string& path);

}  // namespace fwp::server
