#include "server/metrics.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fwp::server {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  const size_t bucket =
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  std::lock_guard<std::mutex> lock(mutex_);
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void Histogram::Render(std::string& out, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppendFormat(&out, "%s_bucket{le=\"%g\"} %d\n", name, bounds_[i], cumulative);
  }
  absl::StrAppendFormat(&out, "%s_bucket{le=\"+Inf\"} %d\n", name, count_);
  absl::StrAppendFormat(&out, "%s_sum %.9g\n%s_count %d\n", name, sum_, name, count_);
}

namespace {

std::vector<double> Exponential(double first, double factor, int n) {
  std::vector<double> bounds;
  for (int i = 0; i < n; ++i, first *= factor) bounds.push_back(first);
  return bounds;
}

}  // namespace

Metrics::Metrics()
    : ttft_s(Exponential(0.001, 2.0, 16)),
      inter_token_s(Exponential(0.0005, 2.0, 14)),
      queue_s(Exponential(0.0001, 2.0, 18)),
      batch_size({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}),
      step_s(Exponential(0.0001, 2.0, 16)) {}

void Metrics::CountRequest(const std::string& method, const std::string& code) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{method, code}];
}

std::string Metrics::Render() const {
  std::string out;
  const auto header = [&](const char* name, const char* type, const char* help) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  header("fwp_requests_total", "counter", "Finished RPCs by method and gRPC status code.");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [key, count] : requests_) {
      absl::StrAppend(&out, "fwp_requests_total{method=\"", key.first, "\",code=\"", key.second,
                      "\"} ", count, "\n");
    }
  }
  const auto histogram = [&](const char* name, const char* help, const Histogram& h) {
    header(name, "histogram", help);
    h.Render(out, name);
  };
  histogram("fwp_time_to_first_token_seconds", "Request arrival to its first token.", ttft_s);
  histogram("fwp_inter_token_latency_seconds", "Time between consecutive tokens of a stream.",
            inter_token_s);
  histogram("fwp_queue_time_seconds", "Request arrival to admission into a state slot.",
            queue_s);
  histogram("fwp_batch_size", "Sessions in one decode step.", batch_size);
  histogram("fwp_step_seconds", "Duration of one engine step.", step_s);
  const auto counter = [&](const char* name, const char* help, uint64_t value) {
    header(name, "counter", help);
    absl::StrAppend(&out, name, " ", value, "\n");
  };
  counter("fwp_generated_tokens_total", "Tokens generated.", generated_tokens.load());
  counter("fwp_prompt_tokens_total", "Prompt tokens fed.", prompt_tokens.load());
  counter("fwp_engine_steps_total", "Engine steps.", steps.load());
  counter("fwp_session_evictions_total", "Sessions moved from device slots to host memory.",
          evictions.load());
  counter("fwp_session_spills_total", "Sessions moved from host memory to disk snapshots.",
          spills.load());
  counter("fwp_sessions_expired_total",
          "Sessions (or snapshot files) deleted after --session_ttl_s unused.",
          expired_sessions.load());
  counter("fwp_session_stale_copies_total",
          "Sessions held here that a replica sharing --snapshot_dir had continued "
          "(--snapshot_every_turn): this replica's copy was dropped for the file's.",
          stale_copies.load());
  counter("fwp_snapshot_write_failures_total",
          "Session snapshots the disk refused (a spilled session then stays in memory).",
          snapshot_write_failures.load());
  counter("fwp_session_restores_total", "Sessions brought back into a device slot.",
          restores.load());
  const auto gauge = [&](const char* name, const char* help, auto value) {
    header(name, "gauge", help);
    absl::StrAppend(&out, name, " ", value, "\n");
  };
  gauge("fwp_state_slots", "State slots in the pool.", slots_total.load());
  gauge("fwp_state_slots_in_use", "State slots holding a session.", slots_in_use.load());
  header("fwp_sessions", "gauge", "Sessions by storage tier.");
  absl::StrAppend(&out, "fwp_sessions{tier=\"device\"} ", sessions_device.load(), "\n");
  absl::StrAppend(&out, "fwp_sessions{tier=\"host\"} ", sessions_host.load(), "\n");
  absl::StrAppend(&out, "fwp_sessions{tier=\"disk\"} ", sessions_disk.load(), "\n");
  gauge("fwp_queued_requests", "Requests waiting for a state slot.", queued.load());
  gauge("fwp_running_requests", "Requests admitted and running.", running.load());
  gauge("fwp_tokens_per_second", "Generated tokens per second over the last second.",
        absl::StrFormat("%.3f", tokens_per_second.load()));
  return out;
}

}  // namespace fwp::server
