#include "server/server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/status_macros.h"
#include "model/model_dir.h"
#include "server/http_gateway.h"
#include "server/penalty_table.h"
#include "server/snapshot.h"

namespace fwp::server {

struct Server::Impl {
  std::unique_ptr<Backend> backend;
  LoadedModel model;
  std::unique_ptr<FwpService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  httplib::Server http;
  std::thread http_thread;
  std::unique_ptr<HttpGateway> gateway;
  std::string backend_name;
};

absl::StatusOr<std::map<std::string, std::string>> ReadAuthTokens(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--auth_tokens_file ", path, ": cannot open"));
  std::map<std::string, std::string> tokens;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    std::istringstream fields(line);
    std::string name, token, extra;
    if (!(fields >> name) || name[0] == '#') continue;
    if (!(fields >> token) || (fields >> extra)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", number, ": expected \"name token\" (two fields separated by space)"));
    }
    if (token.size() < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": token of \"", name, "\" is shorter than 16 bytes"));
    }
    if (!tokens.emplace(token, name).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": duplicate token"));
    }
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--auth_tokens_file ", path, " has no tokens"));
  }
  return tokens;
}

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(flag, " ", path, ": cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The listening flags, checked before anything is loaded: gRPC and the
// kernel would take a port above 65535 modulo 2^16 without a word.
absl::Status CheckListenOptions(const ServerOptions& options) {
  const size_t colon = options.address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(options.address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--address must be host:port with a port in [0, 65535], got \"", options.address, "\""));
  }
  if (options.http_port < -1 || options.http_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http_port must be -1 (off) or a port in [0, 65535], got ", options.http_port));
  }
  if (options.metrics_port < -1 || options.metrics_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics_port must be -1 (off) or a port in [0, 65535], got ", options.metrics_port));
  }
  if (options.service.max_request_bytes < 1 ||
      options.service.max_request_bytes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_request_bytes must be in [1, 2^30], got ", options.service.max_request_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  FWP_RETURN_IF_ERROR(CheckListenOptions(options));
  std::unique_ptr<Server> server(new Server());
  server->impl_ = std::make_unique<Impl>();
  Impl& impl = *server->impl_;

  const std::string backend = ResolveBackendName(options.backend);
  FWP_ASSIGN_OR_RETURN(impl.backend, MakeBackend(backend));
  impl.backend_name = backend;
  FWP_ASSIGN_OR_RETURN(impl.model, LoadModelDir(options.model_dir, *impl.backend));
  FWP_ASSIGN_OR_RETURN(uint64_t fingerprint, ModelFingerprint(options.model_dir));
  if (!options.auth_tokens_file.empty()) {
    FWP_ASSIGN_OR_RETURN(options.service.tokens, ReadAuthTokens(options.auth_tokens_file));
  }
  if (options.engine.slots == 0) {
    // Sized from free memory: 80% of what the backend has left after the
    // weights, one slot per session state and its row of the penalty table
    // (allocated when a penalised request first runs, so that it then fits),
    // at least 1 and at most kMaxAutoSlots (the engine's per-step buffers grow
    // with the slots).
    constexpr int64_t kMaxAutoSlots = 4096;
    const int64_t slot_bytes = impl.model.model->state_layout().SlotBytes() +
                               PenaltyTable::RowBytes(impl.model.config.vocab_size);
    const int64_t budget = impl.backend->AvailableBytes() / 10 * 8;
    options.engine.slots = static_cast<int32_t>(
        std::clamp<int64_t>(budget / std::max<int64_t>(slot_bytes, 1), 1, kMaxAutoSlots));
  }
  FWP_ASSIGN_OR_RETURN(server->engine_,
                       Engine::Create(options.engine, *impl.model.model, *impl.model.tokenizer,
                                      fingerprint, &server->metrics_));

  ModelDescription description;
  FWP_ASSIGN_OR_RETURN(description.config_json,
                       ReadFile(options.model_dir + "/config.json", "--model"));
  for (const auto& p : impl.model.model->Parameters()) description.parameters += p.size;
  description.backend = impl.backend_name;
  description.fingerprint = absl::StrFormat("%016x", fingerprint);
  description.replica = options.replica_name;
  if (description.replica.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    description.replica = host;
  }
  impl.service = std::make_unique<FwpService>(
      options.service, *server->engine_, *impl.model.tokenizer,
      static_cast<int32_t>(impl.model.config.vocab_size), std::move(description),
      server->metrics_);

  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!options.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    FWP_ASSIGN_OR_RETURN(pair.private_key, ReadFile(options.tls_key, "--tls_key"));
    FWP_ASSIGN_OR_RETURN(pair.cert_chain, ReadFile(options.tls_cert, "--tls_cert"));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address, credentials, &server->port_);
  // No SO_REUSEPORT (gRPC's default on Linux): a second server on a port in
  // use must fail, not share the port and take half of the first's calls.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(impl.service.get());
  // Oversized requests reach the handler and get INVALID_ARGUMENT naming
  // the limit; gRPC's own cap sits above it.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(options.service.max_request_bytes * 2 + 1024, INT32_MAX)));
  impl.grpc_server = builder.BuildAndStart();
  if (!impl.grpc_server || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.address,
        options.tls_cert.empty()
            ? " (port in use, or the host is not an address of this machine)"
            : " (port in use, the host is not this machine's, or gRPC refused --tls_cert/"
              "--tls_key: a certificate chain and its private key in PEM)"));
  }
  impl.grpc_server->GetHealthCheckService()->SetServingStatus(true);

  if (options.metrics_port >= 0) {
    Metrics* metrics = &server->metrics_;
    impl.http.Get("/metrics", [metrics](const httplib::Request&, httplib::Response& response) {
      response.set_content(metrics->Render(), "text/plain; version=0.0.4");
    });
    // httplib's default also sets SO_REUSEPORT: SO_REUSEADDR only, for the
    // same reason as the gRPC port.
    impl.http.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    if (options.metrics_port == 0) {
      server->metrics_port_ = impl.http.bind_to_any_port(options.metrics_address);
    } else if (impl.http.bind_to_port(options.metrics_address, options.metrics_port)) {
      server->metrics_port_ = options.metrics_port;
    }
    if (server->metrics_port_ <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen for metrics on ",
                                                 options.metrics_address, ":",
                                                 options.metrics_port));
    }
    impl.http_thread = std::thread([&impl] { impl.http.listen_after_bind(); });
    // Until it runs, httplib's stop() would not stop it (Shutdown would hang).
    while (!impl.http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (options.http_port >= 0) {
    // Over the server's own in-process channel: the gateway's calls are
    // the gRPC service's, answered alike.
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    HttpGatewayOptions http;
    http.address = options.http_address;
    http.port = options.http_port;
    http.threads = options.http_threads;
    // JSON spells a request out at several times its message's bytes.
    http.max_body_bytes = std::min<int64_t>(options.service.max_request_bytes * 8, INT32_MAX);
    http.model_name = std::filesystem::path(options.model_dir).lexically_normal().filename();
    if (http.model_name.empty()) {
      http.model_name =
          std::filesystem::path(options.model_dir).lexically_normal().parent_path().filename();
    }
    FWP_ASSIGN_OR_RETURN(impl.gateway,
                         HttpGateway::Start(impl.grpc_server->InProcessChannel(args), http));
  }
  return server;
}

int Server::http_port() const { return impl_->gateway ? impl_->gateway->port() : 0; }

const std::string& Server::backend_name() const { return impl_->backend_name; }

void Server::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  impl_->grpc_server->GetHealthCheckService()->SetServingStatus(false);
  engine_->Drain(grace);
  if (impl_->gateway) impl_->gateway->Stop();  // its streams ended with the drain
  impl_->grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (impl_->http_thread.joinable()) {
    impl_->http.stop();
    impl_->http_thread.join();
  }
}

Server::~Server() {
  if (impl_ && impl_->grpc_server) Shutdown(std::chrono::milliseconds(0));
  engine_.reset();
}

}  // namespace fwp::server
