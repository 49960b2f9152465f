// The AVX2 + FMA variant of the matmul micro-kernel (compiled with -mavx2
// -mfma; called only where the CPU has both). Every multiply-add is an
// explicit FMA, so each element's arithmetic is fixed here too.
#include <immintrin.h>

#include <cmath>

#include "kernels/matmul_tile.h"

namespace fwp::cpu::matmul_internal {
namespace {

struct Avx2Isa {
  using V = __m256;
  static V Zero() { return _mm256_setzero_ps(); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static V Madd(V acc, V a, V b) { return _mm256_fmadd_ps(a, b, acc); }
  static float Reduce(V v) {
    alignas(32) float l[8];
    _mm256_store_ps(l, v);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  }
  // Reduce's tree for four vectors in three horizontal adds and one add:
  // hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7], so
  // lane s of the second round's low half is (l0+l1)+(l2+l3) of v[s] and of
  // its high half (l4+l5)+(l6+l7); the last add joins them.
  static void Reduce4(const V* v, float* out) {
    const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(pairs),
                                  _mm256_extractf128_ps(pairs, 1)));
  }
  static float MaddScalar(float acc, float a, float b) { return std::fma(a, b, acc); }
};

}  // namespace

void ColumnsAvx2(const float* a, const float* b, const float* bias, float* c, int64_t m,
                 int64_t n, int64_t k, int64_t j0, int64_t j1, bool accumulate) {
  Columns<Avx2Isa>(a, b, bias, c, m, n, k, j0, j1, accumulate);
}

}  // namespace fwp::cpu::matmul_internal
