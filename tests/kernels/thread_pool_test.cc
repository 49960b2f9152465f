#include "kernels/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace fwp {
namespace {

TEST(ThreadPool, RunsEveryIndexExactlyOnceAcrossManyCalls) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (int call = 0; call < 500; ++call) {
      const int64_t n = 1 + call % 37;
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, [&](int64_t i) { hits[i].fetch_add(1); });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "call " << call;
    }
  }
}

TEST(ThreadPool, EmptyRangeDoesNothing) {
  ThreadPool pool(3);
  bool ran = false;
  pool.ParallelFor(0, [&](int64_t) { ran = true; });
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace fwp
