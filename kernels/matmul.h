// Matmul: C[m, n] = A[m, k] · B[n, k]ᵀ (+ bias[n]) (+ C when accumulating).
//
// B is stored [out, in] as in PyTorch's nn.Linear, so a checkpoint's weight
// matrices are used as they are. Accumulation folds the residual add of a
// block into its output projection. The CPU version is hand-written and
// batch-invariant (see matmul.cc); the CUDA version goes through cuBLAS; both
// accumulate in float32.
#pragma once

#include <cstdint>

namespace fwp::cpu {

// a: [m, k], b: [n, k], bias: [n] or null, c: [m, n].
// accumulate = false: c = a·bᵀ + bias; accumulate = true: c += a·bᵀ + bias.
void Matmul(const float* a, const float* b, const float* bias, float* c,
            int64_t m, int64_t n, int64_t k, bool accumulate);

// The same product through BLAS, in blocks of rows spread over the CPU
// pool: faster on training shapes, and independent of the thread count, but
// a row's bits depend on its block (not batch-invariant).
void MatmulBlas(const float* a, const float* b, const float* bias, float* c,
                int64_t m, int64_t n, int64_t k, bool accumulate);

// Backward of Matmul given dc = ∂L/∂C [m, n]:
//   da = dc · b      [m, k]   written (=), skipped when null
//   db += dcᵀ · a    [n, k]   parameter gradients accumulate (+=)
//   dbias += Σ_rows dc [n]    skipped when null
// (With accumulate, C's old value is an input too: its gradient is dc itself,
// which the caller already holds.)
void MatmulBackward(const float* dc, const float* a, const float* b, float* da,
                    float* db, float* dbias, int64_t m, int64_t n, int64_t k);

}  // namespace fwp::cpu
