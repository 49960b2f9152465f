#include "kernels/device.h"

#include <gtest/gtest.h>

namespace fwp {
namespace {

// Says, in every test log, whether the CUDA tests in this run can use a GPU.
TEST(Device, ReportsWhetherACudaDeviceIsUsable) {
  std::string why_not;
  const int count = CudaDeviceCount(&why_not);
  EXPECT_GE(count, 0);
  if (count == 0) {
    EXPECT_FALSE(why_not.empty());
    GTEST_SKIP() << "CUDA tests will skip: " << why_not;
  }
}

}  // namespace
}  // namespace fwp
