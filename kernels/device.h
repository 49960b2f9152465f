// Which compute devices this build can use. Without CUDA support compiled in
// (no nvcc at build time) or without a usable GPU, CudaDeviceCount is 0 and
// `why_not` says which of the two it is, for tests and logs to report.
#pragma once

#include <string>

namespace fwp {

int CudaDeviceCount(std::string* why_not);

}  // namespace fwp
