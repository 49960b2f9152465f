#include <cuda_runtime.h>

#include <string>

#include "kernels/device.h"

namespace fwp {

int CudaDeviceCount(std::string* why_not) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why_not) {
      *why_not = std::string("no usable CUDA device: ") + cudaGetErrorString(err);
    }
    cudaGetLastError();  // clear the sticky error for later calls
    return 0;
  }
  if (count == 0 && why_not) *why_not = "no CUDA device is present";
  return count;
}

}  // namespace fwp
