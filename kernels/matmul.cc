#include "kernels/matmul.h"

// The tile code passes 8-float vectors between inlined helpers only: no ABI
// boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <cblas.h>

#include <cstring>

#include "kernels/matmul_tile.h"
#include "kernels/thread_pool.h"

// The CPU matmul is written by hand rather than called from BLAS so that it is
// batch-invariant: a session's logits are bit-identical whether it is decoded
// alone or among hundreds of others. BLAS libraries switch kernels with the
// shape (gemv for one row, small-matrix paths, split reductions) and promise
// no such thing. matmul_tile.h fixes the order of every element's operations;
// this file is compiled without floating-point contraction so the compiler
// cannot fuse some of them differently in different tiles. The AVX2 + FMA
// variant (matmul_avx2.cc) is chosen at run time where the CPU has it; threads
// split the columns, which does not change any element's arithmetic.

namespace fwp::cpu {
namespace matmul_internal {
namespace {

using v8 = float __attribute__((vector_size(32)));

struct GenericIsa {
  using V = v8;
  static V Zero() { return V{}; }
  static V Load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static V Madd(V acc, V a, V b) { return acc + a * b; }
  static float Reduce(V v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
  }
  static void Reduce4(const V* v, float* out) {
    for (int s = 0; s < 4; ++s) out[s] = Reduce(v[s]);
  }
  static float MaddScalar(float acc, float a, float b) { return acc + a * b; }
};

}  // namespace

void ColumnsGeneric(const float* a, const float* b, const float* bias, float* c, int64_t m,
                    int64_t n, int64_t k, int64_t j0, int64_t j1, bool accumulate) {
  Columns<GenericIsa>(a, b, bias, c, m, n, k, j0, j1, accumulate);
}

}  // namespace matmul_internal

namespace {

using ColumnsFn = void (*)(const float*, const float*, const float*, float*, int64_t, int64_t,
                           int64_t, int64_t, int64_t, bool);

ColumnsFn ChooseColumns() {
#if defined(FWP_HAVE_AVX2_MATMUL)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return matmul_internal::ColumnsAvx2;
  }
#endif
  return matmul_internal::ColumnsGeneric;
}

}  // namespace

void Matmul(const float* a, const float* b, const float* bias, float* c,
            int64_t m, int64_t n, int64_t k, bool accumulate) {
  static const ColumnsFn columns = ChooseColumns();
  if (m <= 0 || n <= 0) return;
  // Tasks of whole 4-column groups whose slice of B (cols · k floats) stays
  // in L2 while every row of A passes it; one task when the work is small.
  const int64_t cols = std::max<int64_t>(4, (16384 / std::max<int64_t>(k, 1)) / 4 * 4);
  const int64_t tasks = (n + cols - 1) / cols;
  if (m * n * k < (int64_t{1} << 18) || tasks == 1) {
    columns(a, b, bias, c, m, n, k, 0, n, accumulate);
    return;
  }
  CpuThreadPool().ParallelFor(tasks, [&](int64_t t) {
    columns(a, b, bias, c, m, n, k, t * cols, std::min(n, (t + 1) * cols), accumulate);
  });
}

void MatmulBlas(const float* a, const float* b, const float* bias, float* c, int64_t m,
                int64_t n, int64_t k, bool accumulate) {
  constexpr int64_t kRows = 64;
  CpuThreadPool().ParallelFor((m + kRows - 1) / kRows, [&](int64_t task) {
    const int64_t i0 = task * kRows, rows = std::min(kRows, m - i0);
    float* ci = c + i0 * n;
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias != nullptr && !accumulate) {
      for (int64_t i = 0; i < rows; ++i) std::copy(bias, bias + n, ci + i * n);
      beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows),
                static_cast<int>(n), static_cast<int>(k), 1.0f, a + i0 * k, static_cast<int>(k),
                b, static_cast<int>(k), beta, ci, static_cast<int>(n));
    if (bias != nullptr && accumulate) {
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < n; ++j) ci[i * n + j] += bias[j];
      }
    }
  });
}

void MatmulBackward(const float* dc, const float* a, const float* b, float* da,
                    float* db, float* dbias, int64_t m, int64_t n, int64_t k) {
  // Training shapes, not decode: BLAS kernels do the work (batch invariance is
  // a serving property), each task on its own block of the output so the
  // result does not depend on the number of threads.
  constexpr int64_t kRows = 64;
  const int64_t da_tasks = da ? (m + kRows - 1) / kRows : 0;
  const int64_t db_tasks = db ? (n + kRows - 1) / kRows : 0;
  CpuThreadPool().ParallelFor(da_tasks + db_tasks, [&](int64_t task) {
    if (task < da_tasks) {  // da[i0:i1] = dc[i0:i1] · b
      const int64_t i0 = task * kRows, rows = std::min(kRows, m - i0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows),
                  static_cast<int>(k), static_cast<int>(n), 1.0f, dc + i0 * n,
                  static_cast<int>(n), b, static_cast<int>(k), 0.0f, da + i0 * k,
                  static_cast<int>(k));
    } else {  // db[j0:j1] += dc[:, j0:j1]ᵀ · a
      const int64_t j0 = (task - da_tasks) * kRows, rows = std::min(kRows, n - j0);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(rows),
                  static_cast<int>(k), static_cast<int>(m), 1.0f, dc + j0,
                  static_cast<int>(n), a, static_cast<int>(k), 1.0f, db + j0 * k,
                  static_cast<int>(k));
    }
  });
  if (dbias != nullptr) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) dbias[j] += dc[i * n + j];
    }
  }
}

}  // namespace fwp::cpu
