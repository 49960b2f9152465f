#include <cuda_runtime.h>

#include <string>

#include "kernels/device.h"

#ifndef FWP_CUDA_ARCHITECTURES
#define FWP_CUDA_ARCHITECTURES "(not recorded)"
#endif

namespace fwp {
namespace {

// Does nothing: cudaFuncGetAttributes on it says whether this build holds
// code the device can run (machine code for its architecture, or PTX it can
// compile); every .cu file is built for the same architectures.
__global__ void ProbeKernel() {}

}  // namespace

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

bool CudaDeviceRunsThisBuild(int device, std::string* why_not) {
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) {
    cudaFuncAttributes attributes;
    err = cudaFuncGetAttributes(&attributes, ProbeKernel);
    if (err == cudaSuccess) return true;
  }
  cudaGetLastError();
  const bool no_code = err == cudaErrorNoKernelImageForDevice ||
                       err == cudaErrorInvalidDeviceFunction ||
                       err == cudaErrorUnsupportedPtxVersion;
  if (why_not && !no_code) {  // a device that cannot start (busy, out of memory, ...)
    *why_not = std::string("CUDA device ") + std::to_string(device) + ": " +
               cudaGetErrorString(err);
  } else if (why_not) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    cudaGetLastError();
    *why_not = std::string("CUDA device ") + std::to_string(device) + " (compute capability " +
               std::to_string(major) + "." + std::to_string(minor) +
               ") cannot run this build's kernels, built for CUDA architectures " +
               FWP_CUDA_ARCHITECTURES + " (" + cudaGetErrorString(err) +
               "): rebuild with FWP_CUDA_ARCHITECTURES=" + std::to_string(major) +
               std::to_string(minor) + " scripts/setup";
  }
  return false;
}

}  // namespace fwp
