// tools/cuda_emulation driver: matmul_invariant.cu emulated on the CPU against
// cpu::Matmul (relative error under 1e-5, outputs poisoned first), and its
// promise: a row's bits do not depend on how many rows share the launch.
#include "kernels/cuda_common.cuh"
#include MATMUL_INVARIANT_INC

#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/matmul.h"
#include "tests/reference.h"

int main() {
  using namespace fwp;
  using testing::RandomVector;
  Rng rng(5);
  int failures = 0;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 7, 5}, {70, 65, 37},
                         {130, 129, 48}}) {
    const auto a = RandomVector(m * k, rng), b = RandomVector(n * k, rng);
    const auto bias = RandomVector(n, rng), c0 = RandomVector(m * n, rng);
    for (bool accumulate : {false, true}) {
      std::vector<float> want = c0, got = accumulate ? c0 : std::vector<float>(m * n, nan);
      cpu::Matmul(a.data(), b.data(), bias.data(), want.data(), m, n, k, accumulate);
      cuda::InvariantMatmul(nullptr, a.data(), b.data(), bias.data(), got.data(), m, n, k,
                            accumulate);
      const double rel = testing::RelativeError(got, want);
      std::printf("%lldx%lldx%lld%s: rel %.3g\n", static_cast<long long>(m),
                  static_cast<long long>(n), static_cast<long long>(k),
                  accumulate ? " (accumulate)" : "", rel);
      if (!(rel < 1e-5)) ++failures;
      // The first three rows alone give the same bits.
      const int64_t few = std::min<int64_t>(3, m);
      std::vector<float> alone = accumulate ? std::vector<float>(c0.begin(), c0.begin() + few * n)
                                            : std::vector<float>(few * n, nan);
      cuda::InvariantMatmul(nullptr, a.data(), b.data(), bias.data(), alone.data(), few, n, k,
                            accumulate);
      if (std::memcmp(alone.data(), got.data(), few * n * sizeof(float)) != 0) {
        std::printf("FAIL rows computed alone differ from the same rows among %lld\n",
                    static_cast<long long>(m));
        ++failures;
      }
    }
  }
  std::printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
