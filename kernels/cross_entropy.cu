// Fused softmax cross-entropy on the GPU (see cross_entropy.h): one block
// per row, max and sum of exponentials by block reductions.
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"

namespace fwp::cuda {
namespace {

__global__ void SoftmaxCrossEntropyKernel(const float* logits, const int32_t* targets,
                                          int64_t vocab, float* losses, float* dlogits,
                                          float dloss) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = logits + row * vocab;
  float* dx = dlogits ? dlogits + row * vocab : nullptr;
  const int32_t target = targets[row];
  if (target < 0) {
    if (threadIdx.x == 0) losses[row] = 0.0f;
    if (dx) {
      for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) dx[j] = 0.0f;
    }
    return;
  }
  float max = -INFINITY;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) max = fmaxf(max, x[j]);
  max = BlockMax(max, scratch);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) sum += expf(x[j] - max);
  sum = BlockSum(sum, scratch);
  const float target_logit = x[target];  // read before dx (which may alias x) is written
  __syncthreads();
  if (threadIdx.x == 0) losses[row] = logf(sum) - (target_logit - max);
  if (dx) {
    const float inv = 1.0f / sum;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float p = expf(x[j] - max) * inv;
      dx[j] = (p - (j == target ? 1.0f : 0.0f)) * dloss;
    }
  }
}

}  // namespace

void SoftmaxCrossEntropy(cudaStream_t stream, const float* logits, const int32_t* targets,
                         int64_t rows, int64_t vocab, float* losses, float* dlogits,
                         float dloss) {
  if (rows == 0) return;
  SoftmaxCrossEntropyKernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(
      logits, targets, vocab, losses, dlogits, dloss);
  FWP_CUDA_LAUNCHED("softmax cross-entropy");
}

}  // namespace fwp::cuda
