#include "kernels/matmul.h"

#include <algorithm>
#include <cstring>

// The CPU matmul is written by hand rather than called from BLAS so that it is
// batch-invariant: every output element is the same sequence of float
// operations (8 interleaved partial sums over k, combined in a fixed tree,
// then the bias, then the accumulation), whatever m is and wherever the row
// falls in a tile. A session's logits are then bit-identical whether it is
// decoded alone or among hundreds of others; BLAS libraries switch kernels
// with the shape (e.g. gemv for one row) and do not promise that. The file
// is compiled without floating-point contraction so that no variant fuses
// differently from another. On x86-64 the kernel is cloned for AVX2 and
// chosen at load time.

namespace fwp::cpu {
namespace {

using v8 = float __attribute__((vector_size(32)));

#define FWP_ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__)
#define FWP_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FWP_TARGET_CLONES
#endif

FWP_ALWAYS_INLINE v8 Load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

FWP_ALWAYS_INLINE float Reduce(v8 v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// c[r, s] for RA rows of A and RB rows of B.
template <int RA, int RB>
FWP_ALWAYS_INLINE void Tile(const float* a, const float* b, const float* bias,
                            float* c, int64_t n, int64_t k, bool accumulate) {
  v8 acc[RA][RB] = {};
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    v8 av[RA], bv[RB];
    for (int r = 0; r < RA; ++r) av[r] = Load(a + r * k + p);
    for (int s = 0; s < RB; ++s) bv[s] = Load(b + s * k + p);
    for (int r = 0; r < RA; ++r) {
      for (int s = 0; s < RB; ++s) acc[r][s] += av[r] * bv[s];
    }
  }
  for (int r = 0; r < RA; ++r) {
    for (int s = 0; s < RB; ++s) {
      float dot = Reduce(acc[r][s]);
      for (int64_t q = p; q < k; ++q) dot += a[r * k + q] * b[s * k + q];
      if (bias != nullptr) dot += bias[s];
      float& out = c[r * n + s];
      out = accumulate ? out + dot : dot;
    }
  }
}

template <int RA>
FWP_ALWAYS_INLINE void Row(const float* a, const float* b, const float* bias, float* c,
                           int64_t n, int64_t k, int64_t j0, int64_t j1, bool accumulate) {
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    Tile<RA, 4>(a, b + j * k, bias ? bias + j : nullptr, c + j, n, k, accumulate);
  }
  for (; j < j1; ++j) {
    Tile<RA, 1>(a, b + j * k, bias ? bias + j : nullptr, c + j, n, k, accumulate);
  }
}

FWP_TARGET_CLONES
void MatmulKernel(const float* a, const float* b, const float* bias, float* c,
                  int64_t m, int64_t n, int64_t k, bool accumulate) {
  // Blocks of rows of A that stay in cache while B streams past them, and
  // blocks of B rows that stay in L1/L2 while the A block is walked.
  constexpr int64_t kRowBlock = 32;
  const int64_t col_block = std::max<int64_t>(4, (64 * 1024 / 4) / std::max<int64_t>(k, 1) / 4 * 4);
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t i1 = std::min(m, i0 + kRowBlock);
    for (int64_t j0 = 0; j0 < n; j0 += col_block) {
      const int64_t j1 = std::min(n, j0 + col_block);
      int64_t i = i0;
      for (; i + 2 <= i1; i += 2) Row<2>(a + i * k, b, bias, c + i * n, n, k, j0, j1, accumulate);
      for (; i < i1; ++i) Row<1>(a + i * k, b, bias, c + i * n, n, k, j0, j1, accumulate);
    }
  }
}

}  // namespace

void Matmul(const float* a, const float* b, const float* bias, float* c,
            int64_t m, int64_t n, int64_t k, bool accumulate) {
  MatmulKernel(a, b, bias, c, m, n, k, accumulate);
}

}  // namespace fwp::cpu
