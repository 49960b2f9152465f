// Launchers of the CUDA ops: the same shapes and conventions as the CPU ops
// (kernels/<op>.h), device pointers, enqueued on `stream`. Implemented in the
// .cu file beside each op's .cc; used through CudaBackend.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/activation.h"
#include "kernels/adamw.h"
#include "kernels/fast_weight.h"
#include "kernels/feature_map.h"
#include "kernels/sampling.h"

namespace fwp::cuda {

// matmul.cu (cuBLAS, full float32: no TF32)
void Matmul(cublasHandle_t handle, cudaStream_t stream, const float* a, const float* b,
            const float* bias, float* c, int64_t m, int64_t n, int64_t k, bool accumulate);
// matmul_invariant.cu: the same product with bits independent of m (a row's
// result depends only on that row), for batch-invariant decoding.
void InvariantMatmul(cudaStream_t stream, const float* a, const float* b, const float* bias,
                     float* c, int64_t m, int64_t n, int64_t k, bool accumulate);
// The backward needs MatmulBackwardScratch(m, n) floats of device scratch
// when dbias is wanted.
int64_t MatmulBackwardScratch(int64_t m, int64_t n);
void MatmulBackward(cublasHandle_t handle, cudaStream_t stream, const float* dc,
                    const float* a, const float* b, float* da, float* db, float* dbias,
                    int64_t m, int64_t n, int64_t k, float* scratch);

// embedding.cu
void Embedding(cudaStream_t stream, const int32_t* tokens, const int64_t* positions, int64_t n,
               const float* table, int64_t d, float* out);
void EmbeddingBackward(cudaStream_t stream, const int32_t* tokens, int64_t n, const float* dout,
                       int64_t d, float* dtable);

// layernorm.cu; the backward needs LayerNormBackwardScratch(rows, d) floats
// of device scratch.
void LayerNorm(cudaStream_t stream, const float* x, const float* gamma, const float* beta,
               int64_t rows, int64_t d, float eps, float* y);
int64_t LayerNormBackwardScratch(int64_t rows, int64_t d);
void LayerNormBackward(cudaStream_t stream, const float* x, const float* gamma, const float* dy,
                       int64_t rows, int64_t d, float eps, float* dx, float* dgamma,
                       float* dbeta, float* scratch);

// activation.cu
void Activate(cudaStream_t stream, Activation act, float* x, int64_t n);
void ActivateBackward(cudaStream_t stream, Activation act, const float* x, const float* dy,
                      int64_t n, float* dx);

// feature_map.cu
void FeatureMap(cudaStream_t stream, const FeatureMapSpec& spec, const float* x, int64_t rows,
                int64_t d, int64_t x_stride, const float* favor_proj, float* phi);
void FeatureMapBackward(cudaStream_t stream, const FeatureMapSpec& spec, const float* x,
                        int64_t rows, int64_t d, int64_t x_stride, const float* favor_proj,
                        const float* dphi, float* dx, int64_t dx_stride);

// fast_weight.cu. Any d_value: a state too large for one block's shared
// memory is split into column tiles over several blocks; unsupported only when
// d_φ rows of one column do not fit (FastWeightSupported says so). The
// backward needs FastWeightBackwardScratch(...) floats of device scratch.
bool FastWeightSupported(const FastWeightSpec& spec, const char** why_not);
// The forward runs the chunkwise form with chunks of 64, 32 or 16 tokens (the
// largest that chunk, time rounded up to a power of two and shared memory
// allow), or the recurrence token by token when chunk < 16, time == 1 or no
// chunk fits. The backward likewise.
void FastWeightSequence(cudaStream_t stream, const FastWeightSpec& spec, const float* qkvb,
                        const float* favor_proj, const int32_t* slots, int64_t batch,
                        int64_t time, const StateView& state, float* y, int64_t chunk);
void FastWeightStep(cudaStream_t stream, const FastWeightSpec& spec, const float* qkvb,
                    const float* favor_proj, const int32_t* slots, int64_t n,
                    const StateView& state, float* y);
int64_t FastWeightBackwardScratch(const FastWeightSpec& spec, int64_t batch, int64_t time,
                                  int64_t chunk);
void FastWeightSequenceBackward(cudaStream_t stream, const FastWeightSpec& spec,
                                const float* qkvb, const float* favor_proj,
                                const int32_t* slots, int64_t batch, int64_t time,
                                const StateView& state, const float* dy, float* dqkvb,
                                const StateView& dstate, int64_t chunk, float* scratch);

// cross_entropy.cu
void SoftmaxCrossEntropy(cudaStream_t stream, const float* logits, const int32_t* targets,
                         int64_t rows, int64_t vocab, float* losses, float* dlogits,
                         float dloss);

// adamw.cu
void AdamW(cudaStream_t stream, float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWParams& params);
// sampling.cu: one token per row of logits [rows, vocab] (device) into tokens
// (host), by cpu::SampleWithDraw's definition. sampling and work are host
// arrays; work[row] numbers the sampled (non-greedy) rows 0..sampled_rows−1.
// scratch: SampleScratchBytes(rows, sampled_rows, vocab) of device memory.
// Synchronises.
int64_t SampleScratchBytes(int64_t rows, int64_t sampled_rows, int64_t vocab);
void SampleRows(cudaStream_t stream, const float* logits, int64_t rows, int64_t vocab,
                const RowSampling* sampling, const int32_t* work, int64_t sampled_rows,
                int32_t* tokens, void* scratch);

// Each penalty (a host array of n ≥ 1, each (row, token) once) applied to
// its logit of logits [rows, vocab] (device), in place; scratch: n ×
// LogitPenalty of device memory.
void ApplyPenalties(cudaStream_t stream, float* logits, int64_t vocab,
                    const LogitPenalty* penalties, int64_t n, void* scratch);
// The penalty table's ops (kernels/sampling.h): entries and rows are host
// arrays of n ≥ 1, table device memory; scratch: n × PenaltyCount or
// PenaltyRow of device memory.
void SetPenaltyCounts(cudaStream_t stream, int32_t* table, int64_t vocab,
                      const PenaltyCount* entries, int64_t n, void* scratch);
void ApplyPenaltyRows(cudaStream_t stream, float* logits, int64_t vocab, const int32_t* table,
                      const PenaltyRow* rows, int64_t n, void* scratch);

// Σ x² as SumSquaresBlocks(n) partial doubles (device) for the host to add.
int SumSquaresBlocks(int64_t n);
void SumSquares(cudaStream_t stream, const float* x, int64_t n, double* partial);

}  // namespace fwp::cuda
