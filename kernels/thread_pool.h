// A small fork-join pool for the CPU backend's ops. ParallelFor splits an index
// range into tasks that idle threads take in order; the caller works too and
// returns when every task is done. Results never depend on the number of
// threads: ops give each task a disjoint piece of the output computed by the
// same code as a single thread would.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace fwp {

class ThreadPool {
 public:
  // `threads` ≥ 1 counts the caller: threads − 1 workers are started.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n). Not reentrant: fn must not call
  // ParallelFor on the same pool.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  // One ParallelFor call. A worker that wakes late holds an exhausted job and
  // leaves it without touching fn.
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
  };

  void Work();
  void Run(Job& job);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::shared_ptr<Job> job_;  // guarded by mutex_
  uint64_t generation_ = 0;   // guarded by mutex_
  bool stop_ = false;         // guarded by mutex_
};

// The process-wide pool of the CPU backend: one thread per core, or
// FWP_CPU_THREADS when set.
ThreadPool& CpuThreadPool();

}  // namespace fwp
