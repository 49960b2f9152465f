#pragma once
#include "kernels/cuda_common.cuh"
#include "kernels/fast_weight.h"
#include "kernels/feature_map.h"
#include "kernels/sampling.h"
