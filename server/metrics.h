// Server metrics in the Prometheus text exposition format: counters, gauges
// and histograms, updated from the engine and RPC threads, rendered on
// scrape (GET /metrics on --metrics_port).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace fwp::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  void Render(std::string& out, const std::string& name) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mutex_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), + the +Inf bucket
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();

  // One finished RPC, by method and gRPC status code name.
  void CountRequest(const std::string& method, const std::string& code);

  Histogram ttft_s;              // request arrival → first token
  Histogram inter_token_s;       // between consecutive tokens of a stream
  Histogram queue_s;             // arrival → admitted into a state slot
  Histogram batch_size;          // sessions in a decode step
  Histogram step_s;              // one engine step
  std::atomic<uint64_t> generated_tokens{0};
  std::atomic<uint64_t> prompt_tokens{0};
  std::atomic<uint64_t> steps{0};
  std::atomic<uint64_t> evictions{0};       // device → host
  std::atomic<uint64_t> spills{0};          // host → disk
  std::atomic<uint64_t> restores{0};        // host/disk → device
  std::atomic<uint64_t> snapshot_write_failures{0};
  std::atomic<uint64_t> expired_sessions{0};  // --session_ttl_s
  std::atomic<uint64_t> stale_copies{0};      // replaced by another replica's snapshot
  // Gauges, set by the engine after each step.
  std::atomic<int64_t> slots_total{0};
  std::atomic<int64_t> slots_in_use{0};
  std::atomic<int64_t> sessions_device{0};
  std::atomic<int64_t> sessions_host{0};
  std::atomic<int64_t> sessions_disk{0};
  std::atomic<int64_t> queued{0};
  std::atomic<int64_t> running{0};
  std::atomic<double> tokens_per_second{0.0};

  std::string Render() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, uint64_t> requests_;
};

}  // namespace fwp::server
