// A progress line on a terminal ("loading checkpoint  43% 1.2/2.8 GiB  610 MiB/s"), redrawn at
// most ten times a second; silent when stderr is not a terminal. Thread-safe: Advance() may be
// called from many workers at once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "absl/synchronization/mutex.h"

namespace strata {

class Progress {
 public:
  // `enabled` defaults to "stderr is a terminal".
  Progress(std::string label, uint64_t total_bytes);
  Progress(std::string label, uint64_t total_bytes, bool enabled);
  ~Progress();  // Finishes the line if anything was drawn.

  void Advance(uint64_t bytes);

 private:
  void Draw(bool final);

  const std::string label_;
  const uint64_t total_;
  const bool enabled_;
  const std::chrono::steady_clock::time_point start_;
  std::atomic<uint64_t> done_{0};
  absl::Mutex draw_mu_;
  std::chrono::steady_clock::time_point last_draw_ ABSL_GUARDED_BY(draw_mu_);
  bool drawn_ ABSL_GUARDED_BY(draw_mu_) = false;
};

// "1.5 GiB", "640 KiB", "12 B"
std::string HumanBytes(double bytes);

}  // namespace strata
