// The matmul micro-kernel, shared by the instruction-set variants of
// matmul.cc (generic) and matmul_avx2.cc (AVX2 + FMA). Internal to the CPU
// matmul; see matmul.cc for why it is hand-written.
//
// Every output element is computed by the same sequence of operations: 8
// partial sums over k (lane l takes k ≡ l mod 8, in increasing k), combined
// by a fixed tree, then the k % 8 tail, then the bias, then the accumulation.
// Tile shape and row position do not change it, so results do not depend on m.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fwp::cpu::matmul_internal {

// Isa provides: V, Zero(), Load(p), Madd(acc, a, b) = acc + a·b per lane,
// Reduce(v) (fixed tree), Reduce4(v, out) (out[s] = Reduce(v[s]) for four
// vectors at once, to the same bits), MaddScalar(acc, a, b).
template <class Isa, int RA, int RB>
inline __attribute__((always_inline)) void Tile(const float* a, const float* b,
                                                const float* bias, float* c, int64_t n,
                                                int64_t k, bool accumulate) {
  typename Isa::V acc[RA][RB];
  for (int r = 0; r < RA; ++r) {
    for (int s = 0; s < RB; ++s) acc[r][s] = Isa::Zero();
  }
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    typename Isa::V av[RA];
    for (int r = 0; r < RA; ++r) av[r] = Isa::Load(a + r * k + p);
    for (int s = 0; s < RB; ++s) {  // one B vector live at a time
      const typename Isa::V bv = Isa::Load(b + s * k + p);
      for (int r = 0; r < RA; ++r) acc[r][s] = Isa::Madd(acc[r][s], av[r], bv);
    }
  }
  for (int r = 0; r < RA; ++r) {
    float dots[RB];
    if constexpr (RB == 4) {
      Isa::Reduce4(acc[r], dots);
    } else {
      for (int s = 0; s < RB; ++s) dots[s] = Isa::Reduce(acc[r][s]);
    }
    for (int s = 0; s < RB; ++s) {
      float dot = dots[s];
      for (int64_t q = p; q < k; ++q) dot = Isa::MaddScalar(dot, a[r * k + q], b[s * k + q]);
      if (bias != nullptr) dot += bias[s];
      float& out = c[r * n + s];
      out = accumulate ? out + dot : dot;
    }
  }
}

template <class Isa, int RA>
inline __attribute__((always_inline)) void TileRow(const float* a, const float* b,
                                                   const float* bias, float* c, int64_t n,
                                                   int64_t k, int64_t j0, int64_t j1,
                                                   bool accumulate) {
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    Tile<Isa, RA, 4>(a, b + j * k, bias ? bias + j : nullptr, c + j, n, k, accumulate);
  }
  for (; j < j1; ++j) {
    Tile<Isa, RA, 1>(a, b + j * k, bias ? bias + j : nullptr, c + j, n, k, accumulate);
  }
}

// Columns [j0, j1) of C for every row, in row blocks that stay in cache.
template <class Isa>
void Columns(const float* a, const float* b, const float* bias, float* c, int64_t m,
             int64_t n, int64_t k, int64_t j0, int64_t j1, bool accumulate) {
  constexpr int64_t kRowBlock = 30;
  for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
    const int64_t i1 = std::min(m, i0 + kRowBlock);
    int64_t i = i0;
    for (; i + 3 <= i1; i += 3) {
      TileRow<Isa, 3>(a + i * k, b, bias, c + i * n, n, k, j0, j1, accumulate);
    }
    for (; i + 2 <= i1; i += 2) {
      TileRow<Isa, 2>(a + i * k, b, bias, c + i * n, n, k, j0, j1, accumulate);
    }
    for (; i < i1; ++i) TileRow<Isa, 1>(a + i * k, b, bias, c + i * n, n, k, j0, j1, accumulate);
  }
}

// The variants (columns [j0, j1) of C = A·Bᵀ + bias (+ C)).
void ColumnsGeneric(const float* a, const float* b, const float* bias, float* c, int64_t m,
                    int64_t n, int64_t k, int64_t j0, int64_t j1, bool accumulate);
void ColumnsAvx2(const float* a, const float* b, const float* bias, float* c, int64_t m,
                 int64_t n, int64_t k, int64_t j0, int64_t j1, bool accumulate);

}  // namespace fwp::cpu::matmul_internal
