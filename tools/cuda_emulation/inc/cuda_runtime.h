// The shim's kernels/cuda_common.cuh declares the runtime; a file that
// includes only <cuda_runtime.h> (device_cuda.cu) gets it from here.
#pragma once
#include "kernels/cuda_common.cuh"
