// Helpers shared by the transport tests: completions that record their status and can be waited on
// with a deadline (tests never sleep to wait for things).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/transport.h"

namespace strata::transport::testing {

// Long enough for an overloaded CI machine, short enough that a hang fails the test.
inline constexpr absl::Duration kDeadline = absl::Seconds(60);

// Records the completions of `n` operations (by index) and counts how often each was called.
class Completions {
 public:
  explicit Completions(size_t n) : calls_(n, 0), statuses_(n) {}

  Completion For(size_t i) {
    return [this, i](absl::Status status) {
      absl::MutexLock lock(&mu_);
      ++calls_[i];
      statuses_[i] = std::move(status);
      ++total_;
    };
  }

  // Waits until `n` completions (in all) have been called; false at the deadline.
  bool WaitFor(size_t n, absl::Duration deadline = kDeadline) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return total_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), deadline);
  }

  int calls(size_t i) {
    absl::MutexLock lock(&mu_);
    return calls_[i];
  }
  absl::Status status(size_t i) {
    absl::MutexLock lock(&mu_);
    return statuses_[i];
  }
  size_t total() {
    absl::MutexLock lock(&mu_);
    return total_;
  }

 private:
  absl::Mutex mu_;
  std::vector<int> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Status> statuses_ ABSL_GUARDED_BY(mu_);
  size_t total_ ABSL_GUARDED_BY(mu_) = 0;
};

// Byte `i` of pattern `seed`: distinct per position and seed, so misplaced bytes show.
inline uint8_t Pattern(uint64_t seed, uint64_t i) {
  const uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (seed * 0xBF58476D1CE4E5B9ull);
  return static_cast<uint8_t>(x >> 56);
}

inline void Fill(uint8_t* p, size_t len, uint64_t seed) {
  for (size_t i = 0; i < len; ++i) p[i] = Pattern(seed, i);
}

// Index of the first byte that differs from the pattern, or len when all match.
inline size_t FirstMismatch(const uint8_t* p, size_t len, uint64_t seed) {
  for (size_t i = 0; i < len; ++i) {
    if (p[i] != Pattern(seed, i)) return i;
  }
  return len;
}

}  // namespace strata::transport::testing
