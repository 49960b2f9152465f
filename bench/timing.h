// Timing for the bench programs: runs `fn` until at least `seconds` have
// passed and returns the seconds per call. `backend` (optional) is
// synchronised before the clock is read, so queued GPU work is counted.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

#include "kernels/backend.h"

namespace fwp::bench {

inline double TimePerCall(double seconds, const std::function<void()>& fn,
                          Backend* backend = nullptr) {
  using Clock = std::chrono::steady_clock;
  auto sync = [&] {
    if (backend != nullptr) backend->Synchronize();
  };
  fn();  // warm up
  sync();
  int64_t calls = 0;
  const auto start = Clock::now();
  double elapsed = 0.0;
  do {
    fn();
    ++calls;
    if (backend == nullptr || calls % 4 == 0) {
      sync();
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    }
  } while (elapsed < seconds);
  return elapsed / calls;
}

}  // namespace fwp::bench
