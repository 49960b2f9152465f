#include "kernels/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fwp {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

// Polls `done` until it holds or spin_ has passed, yielding the core to any
// other runnable thread between rounds; true when it holds.
template <class Done>
bool ThreadPool::SpinUntil(const Done& done) const {
  if (spin_.count() <= 0) return done();
  const auto deadline = std::chrono::steady_clock::now() + spin_;
  while (true) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      CpuRelax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
    // Runnable threads of this core (gRPC's, on a small machine) go first.
    std::this_thread::yield();
  }
}

ThreadPool::ThreadPool(int threads, std::chrono::microseconds spin) : spin_(spin) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::Run(Job& job) {
  int64_t i;
  while ((i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n) {
    if (!job.failed.load(std::memory_order_relaxed)) {
      try {
        (*job.fn)(i);
      } catch (...) {
        if (!job.failed.exchange(true, std::memory_order_acq_rel)) {
          job.error = std::current_exception();
        }
      }
    }
    if (job.finished.fetch_add(1, std::memory_order_acq_rel) + 1 == job.n) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (callers_sleeping_ > 0) done_.notify_all();
    }
  }
}

void ThreadPool::Work() {
  uint64_t seen = 0;
  while (true) {
    const auto ready = [&] {
      return stop_.load(std::memory_order_acquire) ||
             generation_.load(std::memory_order_acquire) != seen;
    };
    std::shared_ptr<Job> job;
    const bool woke = SpinUntil(ready);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!woke) {
        ++sleepers_;
        wake_.wait(lock, ready);
        --sleepers_;
      }
      if (stop_.load(std::memory_order_relaxed)) return;
      seen = generation_.load(std::memory_order_relaxed);
      job = job_;
    }
    if (job) Run(*job);
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  bool sleeping;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = job;
    generation_.fetch_add(1, std::memory_order_release);
    sleeping = sleepers_ > 0;
  }
  if (sleeping) wake_.notify_all();
  Run(*job);
  const auto finished = [&] { return job->finished.load(std::memory_order_acquire) == n; };
  if (!SpinUntil(finished)) {
    std::unique_lock<std::mutex> lock(mutex_);
    ++callers_sleeping_;
    done_.wait(lock, finished);
    --callers_sleeping_;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_.reset();
  }
  // (`finished` was read with acquire after every task, so `error` is seen.)
  if (job->failed.load(std::memory_order_acquire)) std::rethrow_exception(job->error);
}

ThreadPool& CpuThreadPool() {
  static ThreadPool* pool = [] {
    int threads = static_cast<int>(std::thread::hardware_concurrency());
    if (const char* env = std::getenv("FWP_CPU_THREADS")) threads = std::atoi(env);
    std::chrono::microseconds spin(200);
    if (const char* env = std::getenv("FWP_CPU_SPIN_US")) {
      spin = std::chrono::microseconds(std::max(0, std::atoi(env)));
    }
    return new ThreadPool(threads < 1 ? 1 : threads, spin);
  }();
  return *pool;
}

}  // namespace fwp
