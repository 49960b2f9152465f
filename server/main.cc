// fwp-server: serves a model directory over gRPC (fwp.v1.Fwp).
//
//   fwp-server --model models/default --address 0.0.0.0:50051 --metrics_port 9090
//
// SIGTERM / SIGINT drain gracefully: health goes NOT_SERVING, new requests
// get UNAVAILABLE, running streams get --grace_s to finish, sessions are
// written to --snapshot_dir when set.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <semaphore>

#include "absl/flags/flag.h"
#include "cli/flags.h"
#include "server/server.h"

ABSL_FLAG(std::string, model, "models/default", "model directory (config.json, "
          "model.safetensors, tokenizer.model)");
ABSL_FLAG(std::string, backend, "auto", "auto (cuda when a GPU is present, else cpu), cpu, "
          "cuda or cuda:N");
ABSL_FLAG(std::string, address, "0.0.0.0:50051", "gRPC listen address (port 0: any free port)");
ABSL_FLAG(std::string, port_file, "", "write the bound gRPC port to this file once serving");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics HTTP port (-1: off, 0: any free port)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain (with --tls_key: serve TLS)");
ABSL_FLAG(int, http_port, -1, "port of the HTTP/JSON gateway (POST /v1/generate, OpenAI-style "
          "/v1/completions, ...; see server/http_gateway.h); -1: off, 0: any free port");
ABSL_FLAG(std::string, http_address, "0.0.0.0", "address the HTTP gateway listens on");
ABSL_FLAG(int, http_threads, 64, "HTTP connections served at once (a streaming request holds "
          "one for its length)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key");
ABSL_FLAG(std::string, auth_tokens_file, "", "bearer tokens, one \"name token\" per line; "
          "when set every call needs \"authorization: Bearer <token>\"");
ABSL_FLAG(std::string, replica_name, "", "this replica's name in ModelInfo (default: host name)");
ABSL_FLAG(int, slots, 64, "state slots: sessions resident on the device at once (0: sized "
          "from free device memory, at most 4096)");
ABSL_FLAG(int64_t, step_tokens, 512, "tokens per engine step: decode tokens plus prompt pieces");
ABSL_FLAG(int64_t, prefill_piece, 64, "prompt pieces end on multiples of this many tokens");
ABSL_FLAG(int64_t, max_requests, 1024, "requests running or queued at once");
ABSL_FLAG(int64_t, max_queue, 256, "requests waiting for a state slot");
ABSL_FLAG(int64_t, max_prompt_tokens, 65536, "longest prompt in tokens");
ABSL_FLAG(int, max_tokens_limit, 4096, "largest max_tokens a request may ask for");
ABSL_FLAG(int, default_max_tokens, 256, "max_tokens when a request does not set it");
ABSL_FLAG(int64_t, host_bytes, int64_t{4} << 30, "host memory for parked sessions, bytes");
ABSL_FLAG(std::string, snapshot_dir, "", "directory of session snapshots (the disk tier); "
          "sessions are written there at shutdown and found there after a restart");
ABSL_FLAG(bool, snapshot_every_turn, false, "write a session's snapshot after every request "
          "(survives a crash; lets another replica sharing --snapshot_dir continue it)");
ABSL_FLAG(double, session_ttl_s, 0, "delete sessions not asked for in this many seconds (and "
          "their files in --snapshot_dir a quarter of it later, wherever they are held); 0: "
          "keep them until deleted");
ABSL_FLAG(int64_t, stream_buffer, 64, "messages buffered for a slow reader before its "
          "session pauses (and may leave its state slot for another request until read)");
ABSL_FLAG(int64_t, max_request_bytes, 4 << 20, "largest request message");
ABSL_FLAG(double, grace_s, 10.0, "on SIGTERM: seconds running streams get to finish");

namespace {
std::binary_semaphore stop_signal(0);
void OnSignal(int) { stop_signal.release(); }
}  // namespace

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv, "serve a fast weight programmer model over gRPC");
  fwp::server::ServerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.backend = absl::GetFlag(FLAGS_backend);
  options.address = absl::GetFlag(FLAGS_address);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.http_port = absl::GetFlag(FLAGS_http_port);
  options.http_address = absl::GetFlag(FLAGS_http_address);
  options.http_threads = absl::GetFlag(FLAGS_http_threads);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.replica_name = absl::GetFlag(FLAGS_replica_name);
  auto& e = options.engine;
  e.slots = absl::GetFlag(FLAGS_slots);
  e.step_tokens = absl::GetFlag(FLAGS_step_tokens);
  e.prefill_piece = absl::GetFlag(FLAGS_prefill_piece);
  e.max_requests = absl::GetFlag(FLAGS_max_requests);
  e.max_queue = absl::GetFlag(FLAGS_max_queue);
  e.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  e.limits.max_tokens = absl::GetFlag(FLAGS_max_tokens_limit);
  e.host_bytes = absl::GetFlag(FLAGS_host_bytes);
  e.snapshot_dir = absl::GetFlag(FLAGS_snapshot_dir);
  e.snapshot_every_turn = absl::GetFlag(FLAGS_snapshot_every_turn);
  e.session_ttl_s = absl::GetFlag(FLAGS_session_ttl_s);
  e.stream_buffer = static_cast<size_t>(std::max<int64_t>(absl::GetFlag(FLAGS_stream_buffer), 0));
  options.service.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  options.service.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  if (!(absl::GetFlag(FLAGS_grace_s) >= 0.0 && absl::GetFlag(FLAGS_grace_s) <= 86400.0)) {
    std::fprintf(stderr, "fwp-server: --grace_s must be in [0, 86400] seconds\n");
    return 1;
  }
  if (options.service.default_max_tokens < 1 ||
      options.service.default_max_tokens > e.limits.max_tokens) {
    std::fprintf(stderr, "fwp-server: --default_max_tokens must be in [1, --max_tokens_limit]\n");
    return 1;
  }

  if (options.http_port >= 0 && !options.tls_cert.empty()) {
    std::fprintf(stderr, "fwp-server: the HTTP gateway (--http_port) is plain HTTP while gRPC "
                         "uses TLS: keep it on a private network or behind a TLS proxy\n");
  }
  auto server = fwp::server::Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "fwp-server: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  std::fprintf(stderr,
               "fwp-server: serving %s on port %d (backend %s, %d slots, state %lld bytes per "
               "session; state pool %.1f MiB, penalty table %.1f MiB when first used)%s\n",
               options.model_dir.c_str(), (*server)->port(), (*server)->backend_name().c_str(),
               (*server)->engine().options().slots,
               static_cast<long long>((*server)->engine().state_bytes()),
               static_cast<double>((*server)->engine().state_bytes()) *
                   (*server)->engine().options().slots / (1 << 20),
               static_cast<double>((*server)->engine().penalty_table_bytes()) / (1 << 20),
               (std::string(options.metrics_port >= 0
                                ? " metrics on :" + std::to_string((*server)->metrics_port())
                                : "") +
                (options.http_port >= 0 ? " http on :" + std::to_string((*server)->http_port())
                                        : ""))
                   .c_str());
  if (const std::string port_file = absl::GetFlag(FLAGS_port_file); !port_file.empty()) {
    std::ofstream(port_file) << (*server)->port() << "\n";
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  stop_signal.acquire();
  std::fprintf(stderr, "fwp-server: draining (up to %.1f s)\n", absl::GetFlag(FLAGS_grace_s));
  (*server)->Shutdown(std::chrono::milliseconds(
      static_cast<int64_t>(absl::GetFlag(FLAGS_grace_s) * 1000)));
  std::fprintf(stderr, "fwp-server: stopped\n");
  return 0;
}
