// Empty: tools/cuda_emulation/inc/kernels/cuda_common.cuh declares what is used.
#pragma once
