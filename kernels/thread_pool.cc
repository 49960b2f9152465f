#include "kernels/thread_pool.h"

#include <cstdlib>

namespace fwp {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::Run(Job& job) {
  int64_t i;
  while ((i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n) {
    (*job.fn)(i);
    if (job.finished.fetch_add(1, std::memory_order_acq_rel) + 1 == job.n) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_all();
    }
  }
}

void ThreadPool::Work() {
  uint64_t seen = 0;
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = job;
    ++generation_;
  }
  wake_.notify_all();
  Run(*job);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return job->finished.load(std::memory_order_acquire) == n; });
  job_.reset();
}

ThreadPool& CpuThreadPool() {
  static ThreadPool* pool = [] {
    int threads = static_cast<int>(std::thread::hardware_concurrency());
    if (const char* env = std::getenv("FWP_CPU_THREADS")) threads = std::atoi(env);
    return new ThreadPool(threads < 1 ? 1 : threads);
  }();
  return *pool;
}

}  // namespace fwp
