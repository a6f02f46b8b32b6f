#include "common/logging.h"

#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/ostream_sink.h"

namespace strata {
namespace {

TEST(LoggingTest, RejectsUnknownLevelAndFormat) {
  EXPECT_FALSE(InitLogging(LogOptions{.level = "loud"}).ok());
  EXPECT_FALSE(ParseLogFormat("xml").ok());
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_TRUE(InitLogging(LogOptions{.level = "warn"}).ok());
}

TEST(LoggingTest, JsonLinesStayValidJsonWithQuotesBackslashesAndNewlines) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
  sink->set_formatter(MakeLogFormatter(LogOptions{.format = LogFormat::kJson, .service = "router"}));
  spdlog::logger logger("json-test", sink);
  logger.info("request {} said \"hi\\there\"\nand\tleft", 42);
  std::string line = out.str();
  ASSERT_FALSE(line.empty());
  ASSERT_EQ(line.back(), '\n');
  line.pop_back();
  EXPECT_EQ(line.find('\n'), std::string::npos) << "one object per line";
  nlohmann::json parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["msg"], "request 42 said \"hi\\there\"\nand\tleft");
  EXPECT_EQ(parsed["service"], "router");
  EXPECT_EQ(parsed["level"], "info");
}

}  // namespace
}  // namespace strata
