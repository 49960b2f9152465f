// What every emulation driver asserts of an emulated kernel's output: the
// relative error against the CPU twin under 1e-5 and no NaN (outputs start
// poisoned, so a NaN is an element the kernel never wrote).
#pragma once

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "tests/reference.h"

namespace fwp::emulation {

inline int failures = 0;

inline void Check(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
  size_t nans = 0;
  for (float x : got) nans += std::isnan(x);
  const double rel = testing::RelativeError(got, want);
  const bool ok = rel < 1e-5 && nans == 0;
  std::printf("%s%-40s rel %.3g%s\n", ok ? "" : "FAIL ", what, rel,
              nans ? " (NaN: unwritten)" : "");
  if (!ok) ++failures;
}

inline std::vector<float> Poison(size_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

}  // namespace fwp::emulation
