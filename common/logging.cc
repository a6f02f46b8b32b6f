#include "common/logging.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace strata {
namespace {

// %j: the message, escaped as the contents of a JSON string.
class JsonEscapedMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    static constexpr char kHex[] = "0123456789abcdef";
    for (char c : absl::string_view(msg.payload.data(), msg.payload.size())) {
      switch (c) {
        case '"': dest.append(absl::string_view("\\\"")); break;
        case '\\': dest.append(absl::string_view("\\\\")); break;
        case '\n': dest.append(absl::string_view("\\n")); break;
        case '\r': dest.append(absl::string_view("\\r")); break;
        case '\t': dest.append(absl::string_view("\\t")); break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            const char esc[6] = {'\\', 'u', '0', '0', kHex[(c >> 4) & 0xF], kHex[c & 0xF]};
            dest.append(absl::string_view(esc, 6));
          } else {
            dest.push_back(c);
          }
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonEscapedMessage>();
  }
};

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat("unknown log format '", name, "' (want text or json)"));
}

std::unique_ptr<spdlog::formatter> MakeLogFormatter(const LogOptions& options) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  if (options.format == LogFormat::kJson) {
    formatter->add_flag<JsonEscapedMessage>('j').set_pattern(
        absl::StrCat(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","service":")", options.service,
                     R"(","thread":%t,"msg":"%j"})"));
  } else {
    formatter->set_pattern("%Y-%m-%d %H:%M:%S.%e %L %v");
  }
  return formatter;
}

absl::Status InitLogging(const LogOptions& options) {
  spdlog::level::level_enum level = spdlog::level::from_str(options.level);
  if (level == spdlog::level::off && options.level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log level '", options.level, "' (want trace, debug, info, warn, error or off)"));
  }
  spdlog::drop(options.service);
  auto logger = spdlog::stderr_color_mt(options.service);
  logger->set_formatter(MakeLogFormatter(options));
  logger->set_level(level);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

bool LogRateLimiter::Allow(absl::Time now, int64_t* suppressed) {
  absl::MutexLock lock(&mu_);
  if (now - window_start_ >= period_) {
    window_start_ = now;
    in_window_ = 0;
  }
  if (in_window_ >= burst_) {
    ++suppressed_;
    return false;
  }
  ++in_window_;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

}  // namespace strata
