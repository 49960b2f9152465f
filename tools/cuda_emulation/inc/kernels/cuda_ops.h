// Stands in for kernels/cuda_ops.h (whose cuBLAS declarations the emulation
// lacks): the headers the .cu files need; each emulated .cu defines its launchers.
#pragma once
#include "kernels/cuda_common.cuh"
#include "kernels/fast_weight.h"
#include "kernels/feature_map.h"
#include "kernels/sampling.h"
#include "kernels/activation.h"
#include "kernels/adamw.h"
