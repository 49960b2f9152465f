// Which compute devices this build can use. Without CUDA support compiled in
// (no nvcc at build time) or without a usable GPU, CudaDeviceCount is 0 and
// `why_not` says which of the two it is, for tests and logs to report.
#pragma once

#include <string>

namespace fwp {

int CudaDeviceCount(std::string* why_not);

// Whether CUDA device `device` can run this build's kernels (it may be older
// than every architecture they were compiled for); when not, `why_not` names
// the device's compute capability and how to build for it. Makes `device`
// the calling thread's current device.
bool CudaDeviceRunsThisBuild(int device, std::string* why_not);

}  // namespace fwp
