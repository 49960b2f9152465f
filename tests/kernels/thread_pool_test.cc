#include "kernels/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <new>
#include <set>
#include <thread>
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

// Workers that poll (back-to-back calls), that sleep at once (spin 0), and
// that fall asleep between calls (gaps longer than the polling time) all
// take part and lose no call: a lost wake-up would hang here.
TEST(ThreadPool, WorkersTakePartWhetherTheyPollOrSleep) {
  using std::chrono::microseconds;
  for (auto [spin, gap] : {std::pair{microseconds(200), microseconds(0)},
                           {microseconds(0), microseconds(2000)},
                           {microseconds(50), microseconds(2000)}}) {
    ThreadPool pool(3, spin);
    EXPECT_EQ(pool.spin(), spin);
    std::mutex mutex;
    std::set<std::thread::id> ran_on;
    for (int call = 0; call < 40; ++call) {
      std::this_thread::sleep_for(gap);
      std::vector<std::atomic<int>> hits(6);
      pool.ParallelFor(6, [&](int64_t i) {
        hits[i].fetch_add(1);
        if (call == 0) {  // sleeping tasks leave the cores to the workers
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          std::lock_guard<std::mutex> lock(mutex);
          ran_on.insert(std::this_thread::get_id());
        }
      });
      for (int i = 0; i < 6; ++i) ASSERT_EQ(hits[i].load(), 1) << "spin " << spin.count();
    }
    EXPECT_GE(ran_on.size(), 2u) << "spin " << spin.count() << ": only the caller ran tasks";
  }
}

TEST(ThreadPool, EmptyRangeDoesNothing) {
  ThreadPool pool(3);
  bool ran = false;
  pool.ParallelFor(0, [&](int64_t) { ran = true; });
  EXPECT_FALSE(ran);
}

// A task that throws (a scratch buffer that cannot grow) reaches the
// caller, on whichever thread it ran, only once no task still runs: the
// ones not begun are skipped. The pool works on afterwards.
TEST(ThreadPool, ATaskThatThrowsReachesTheCallerAfterTheOthersEnd) {
  ThreadPool pool(4, std::chrono::microseconds(0));
  for (int64_t thrower : {0, 5, 63}) {
    std::atomic<int> begun{0}, ended{0};
    bool caught = false;
    try {
      pool.ParallelFor(64, [&](int64_t i) {
        ++begun;
        std::this_thread::sleep_for(std::chrono::microseconds(300));
        if (i == thrower) throw std::bad_alloc();
        ++ended;
      });
    } catch (const std::bad_alloc&) {
      caught = true;
      EXPECT_EQ(begun.load(), ended.load() + 1) << "a task still ran";
    }
    EXPECT_TRUE(caught) << thrower;
    EXPECT_LE(begun.load(), 64);
  }
  std::atomic<int64_t> sum{0};
  pool.ParallelFor(100, [&](int64_t i) { sum += i; });
  EXPECT_EQ(sum.load(), 4950);
}

}  // namespace
}  // namespace fwp
