// Logging for every process: spdlog to stderr, as plain text or as one JSON object per line
// (--log-format=json) for log shippers. Components log through spdlog's default logger.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
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

}  // namespace strata
