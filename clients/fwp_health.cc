// fwp-health: a grpc.health.v1 probe (for Docker HEALTHCHECK and scripts).
//
//   fwp-health --address localhost:50051     # exit 0 when SERVING
//
// Exit status: 0 SERVING, 1 NOT_SERVING / unknown, 2 unreachable or error.
#include <cstdio>

#include "absl/flags/flag.h"
#include "cli/flags.h"
#include "clients/client_common.h"
#include "grpc/health/v1/health.grpc.pb.h"

ABSL_FLAG(std::string, service, "", "service name to check (empty: the whole server)");
ABSL_FLAG(double, timeout_s, 3.0, "deadline");

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv, "check a server's grpc.health.v1 status");
  fwp::client::ChannelOptions options = fwp::client::ChannelOptionsFromFlags();
  auto channel = fwp::client::MakeChannel(options);
  if (!channel.ok()) {
    std::fprintf(stderr, "fwp-health: %s\n", std::string(channel.status().message()).c_str());
    return 2;
  }
  auto stub = grpc::health::v1::Health::NewStub(*channel);
  grpc::ClientContext context;
  fwp::client::PrepareContext(
      context, options, "",
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    // UNAVAILABLE: nothing answers there; NOT_FOUND: no such --service.
    std::printf("%s\n", fwp::client::Describe(status).c_str());
    return 2;
  }
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}
