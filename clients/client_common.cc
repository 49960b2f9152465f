#include "clients/client_common.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, address, "localhost:50051", "server (or load balancer) address");
ABSL_FLAG(bool, tls, false, "connect with TLS");
ABSL_FLAG(std::string, ca_cert, "", "PEM root certificate for TLS (implies --tls)");
ABSL_FLAG(std::string, token, "", "bearer token (default: $FWP_TOKEN)");

namespace fwp::client {

ChannelOptions ChannelOptionsFromFlags() {
  ChannelOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.tls = absl::GetFlag(FLAGS_tls);
  options.ca_cert = absl::GetFlag(FLAGS_ca_cert);
  options.token = absl::GetFlag(FLAGS_token);
  if (options.token.empty() && std::getenv("FWP_TOKEN") != nullptr) {
    options.token = std::getenv("FWP_TOKEN");
  }
  return options;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls || !options.ca_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!options.ca_cert.empty()) {
      std::ifstream in(options.ca_cert);
      if (!in) return absl::NotFoundError(absl::StrCat("--ca_cert ", options.ca_cert, ": cannot open"));
      std::stringstream pem;
      pem << in.rdbuf();
      ssl.pem_root_certs = pem.str();
    }
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(options.address, credentials, arguments);
}

void PrepareContext(grpc::ClientContext& context, const ChannelOptions& options,
                    const std::string& session_id, std::chrono::milliseconds timeout) {
  if (!options.token.empty()) context.AddMetadata("authorization", "Bearer " + options.token);
  if (!session_id.empty()) context.AddMetadata("x-session-id", session_id);
  if (timeout.count() > 0) context.set_deadline(std::chrono::system_clock::now() + timeout);
}

absl::StatusOr<std::string> StopString(const std::string& value) {
  std::string text, error;
  if (!absl::CUnescape(value, &text, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("--stop \"", value, "\": ", error));
  }
  if (text.empty()) return absl::InvalidArgumentError("--stop strings must not be empty");
  return text;
}

std::string CodeName(grpc::StatusCode code) {
  // gRPC's codes are Abseil's, number for number.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(CodeName(status.error_code()), ": ", status.error_message());
}

}  // namespace fwp::client
