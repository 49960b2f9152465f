// A small fork-join pool for the CPU backend's ops. ParallelFor splits an index
// range into tasks that idle threads take in order; the caller works too and
// returns when every task is done. Results never depend on the number of
// threads: ops give each task a disjoint piece of the output computed by the
// same code as a single thread would.
//
// A decode step is a few dozen short ParallelFor calls (tens to hundreds of µs
// each) with serial work between them, so waking a sleeping thread for each
// (a futex and a trip through the scheduler: 25–30 µs on the VMs here) would
// cost a good part of every call. Workers and the waiting caller therefore
// poll for a while (spin(), FWP_CPU_SPIN_US, default 200 µs; 0 sleeps at
// once) before they sleep; an idle pool sleeps.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace fwp {

class ThreadPool {
 public:
  // `threads` ≥ 1 counts the caller: threads − 1 workers are started.
  explicit ThreadPool(int threads,
                      std::chrono::microseconds spin = std::chrono::microseconds(200));
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n). Not reentrant: fn must not call
  // ParallelFor on the same pool. If a task throws, the tasks not begun are
  // skipped and, once the others are done, the caller gets the exception.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

  // How long a worker (or the caller, waiting for the last task) polls
  // before it sleeps.
  std::chrono::microseconds spin() const { return spin_; }

 private:
  // One ParallelFor call. A worker that wakes late holds an exhausted job and
  // leaves it without touching fn.
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
    // The first exception a task threw (std::bad_alloc, growing scratch):
    // the tasks not yet begun are skipped and the caller rethrows it once
    // every task is done, so none outlives the call's fn.
    std::atomic<bool> failed{false};
    std::exception_ptr error;  // written by the one that set `failed`
  };

  void Work();
  void Run(Job& job);

  template <class Done>
  bool SpinUntil(const Done& done) const;

  const std::chrono::microseconds spin_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::shared_ptr<Job> job_;            // guarded by mutex_
  std::atomic<uint64_t> generation_{0};  // written under mutex_, polled without
  std::atomic<bool> stop_{false};        // written under mutex_, polled without
  int sleepers_ = 0;                     // workers waiting on wake_; guarded by mutex_
  int callers_sleeping_ = 0;             // callers waiting on done_; guarded by mutex_
};

// The process-wide pool of the CPU backend: one thread per core, or
// FWP_CPU_THREADS when set; FWP_CPU_SPIN_US sets its polling time.
ThreadPool& CpuThreadPool();

}  // namespace fwp
