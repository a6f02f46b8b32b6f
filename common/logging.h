// Logging for every process: spdlog to stderr, as plain text or as one JSON object per line
// (--log-format=json) for log shippers. Components log through spdlog's default logger.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace strata {

enum class LogFormat { kText, kJson };

struct LogOptions {
  std::string level = "info";  // trace, debug, info, warn, error, off
  LogFormat format = LogFormat::kText;
  std::string service = "strata";  // the "service" field of JSON lines
};

// The line format InitLogging installs (exposed so tests and extra sinks can use the same).
std::unique_ptr<spdlog::formatter> MakeLogFormatter(const LogOptions& options);

// Configures the default logger. Call once, early in main(), before threads start.
absl::Status InitLogging(const LogOptions& options);

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

// Lets at most `burst` lines through per `period` and counts the rest, so that an outage that
// fails every request logs a few lines a second, not one per request. Thread-safe.
//
//   int64_t suppressed = 0;
//   if (limiter.Allow(clock.Now(), &suppressed)) spdlog::warn("… ({} more not logged)", suppressed);
class LogRateLimiter {
 public:
  explicit LogRateLimiter(int burst = 5, absl::Duration period = absl::Seconds(1))
      : burst_(burst), period_(period) {}
  // True if a line may be logged now; then `suppressed` is how many were held back since the
  // last line let through.
  bool Allow(absl::Time now, int64_t* suppressed);

 private:
  const int burst_;
  const absl::Duration period_;
  absl::Mutex mu_;
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int in_window_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace strata
