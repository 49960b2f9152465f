#include "kernels/backend.h"
#include "kernels/device.h"

namespace fwp {

int CudaDeviceCount(std::string* why_not) {
  if (why_not) *why_not = "this build has no CUDA backend (FWP_CUDA=OFF, or nvcc was not found)";
  return 0;
}

bool CudaDeviceRunsThisBuild(int, std::string* why_not) {
  if (why_not) *why_not = "this build has no CUDA backend (FWP_CUDA=OFF, or nvcc was not found)";
  return false;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int) {
  return absl::UnavailableError("this build has no CUDA backend (FWP_CUDA=OFF, or nvcc was not found)");
}

}  // namespace fwp
