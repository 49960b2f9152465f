#include "kernels/device.h"

#include "kernels/backend.h"

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
  // The device is one this build has code for (else auto picks the CPU and
  // every CUDA test fails at its backend), and a device that is not there
  // is said to be so.
  std::string why;
  EXPECT_TRUE(CudaDeviceRunsThisBuild(0, &why)) << why;
  EXPECT_EQ(ResolveBackendName("auto"), "cuda");
  EXPECT_FALSE(MakeCudaBackend(count).ok());
}

}  // namespace
}  // namespace fwp

namespace fwp {
namespace {

TEST(Backend, IsChosenByName) {
  auto cpu = MakeBackend("cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_STREQ((*cpu)->Name(), "cpu");
  auto bad = MakeBackend("tpu");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown backend 'tpu'"), std::string::npos);
  EXPECT_FALSE(MakeBackend("cuda:x").ok());
  // cuda is either a working backend or UNAVAILABLE with the reason.
  auto cuda = MakeBackend("cuda");
  if (!cuda.ok()) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kUnavailable);
  }
  // auto: the GPU when one is usable (and runs this build), else the CPU,
  // never an error.
  const bool gpu = CudaDeviceCount(nullptr) > 0 && CudaDeviceRunsThisBuild(0, nullptr);
  EXPECT_EQ(ResolveBackendName("auto"), gpu ? "cuda" : "cpu");
  EXPECT_EQ(ResolveBackendName("cuda:1"), "cuda:1");
  auto automatic = MakeBackend("auto");
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_STREQ((*automatic)->Name(), gpu ? "cuda:0" : "cpu");
}

}  // namespace
}  // namespace fwp
