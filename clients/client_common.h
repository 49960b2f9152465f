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

}  // namespace fwp::client
