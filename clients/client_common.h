// What every fwp client shares: a channel to the server (plain or TLS) and a
// client context carrying the bearer token and the session-affinity header.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace fwp::client {

struct ChannelOptions {
  std::string address = "localhost:50051";
  bool tls = false;
  std::string ca_cert;  // PEM file; empty: the system roots
  std::string token;    // bearer token; empty: none
};

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options);

// From the flags every client shares: --address, --tls, --ca_cert, --token
// (or $FWP_TOKEN).
ChannelOptions ChannelOptionsFromFlags();

// Adds "authorization: Bearer <token>" and, for a session, "x-session-id"
// (the header a load balancer hashes to keep a session on its replica).
void PrepareContext(grpc::ClientContext& context, const ChannelOptions& options,
                    const std::string& session_id = "",
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

// A --stop value as the text to stop at: C escapes decoded ("\\n" is a
// newline, "\\x2c" a comma); refused when it is empty or badly escaped.
absl::StatusOr<std::string> StopString(const std::string& value);

// "UNAVAILABLE", "INVALID_ARGUMENT", ...: a status code's name.
std::string CodeName(grpc::StatusCode code);
// "CODE: message", for a failed call's report.
std::string Describe(const grpc::Status& status);

}  // namespace fwp::client
