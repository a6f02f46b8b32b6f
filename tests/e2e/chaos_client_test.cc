// The chaos test's client (tests/e2e/chaos_client.h): its verdicts on answers made by hand — what
// counts as completed, as a clean error, and as a failure (the chaos run fails on any of the last).
#include "tests/e2e/chaos_client.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace strata::testing {
namespace {

TEST(ChaosClientTest, SortsAnswersIntoCompletedCleanErrorAndFailure) {
  auto chunked = [](const std::vector<std::string>& events, bool last_chunk) {
    std::string out =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (const std::string& e : events)
      absl::StrAppend(&out, absl::Hex(e.size()), "\r\n", e, "\r\n");
    if (last_chunk) out += "0\r\n\r\n";
    return out;
  };
  const std::string text = R"(data: {"choices":[{"index":0,"text":"Hi","finish_reason":null}]})"
                           "\n\n";
  const std::string finish = R"(data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]})"
                             "\n\n";
  const std::string usage = R"(data: {"choices":[],"usage":{"completion_tokens":1}})"
                            "\n\n";
  const std::string error =
      R"(data: {"error":{"message":"decode worker d failed","type":"server_error"}})"
      "\n\n";
  const std::string done = "data: [DONE]\n\n";
  const std::string keepalive = ": keep-alive\n\n";
  auto verdict = [](const std::string& raw) {
    StreamResult r;
    ClassifyResponse(raw, r);
    return r;
  };

  StreamResult ok = verdict(chunked({keepalive, text, finish, usage, done}, true));
  EXPECT_EQ(ok.outcome, Outcome::kCompleted) << ok.detail;
  EXPECT_EQ(ok.text, "Hi");
  EXPECT_EQ(ok.finish_reason, "length");
  EXPECT_EQ(ok.completion_tokens, 1);
  // Events may be split across chunks anywhere.
  const std::string all = text + finish + done;
  EXPECT_EQ(verdict(chunked({all.substr(0, 7), all.substr(7, 50), all.substr(57)}, true)).outcome,
            Outcome::kCompleted);

  EXPECT_EQ(verdict(chunked({text, error, done}, true)).outcome, Outcome::kCleanError);
  const std::string body = R"({"error":{"message":"no live decode worker"}})";
  EXPECT_EQ(verdict(absl::StrCat("HTTP/1.1 503 Service Unavailable\r\nContent-Length: ",
                                 body.size(), "\r\n\r\n", body))
                .outcome,
            Outcome::kCleanError);

  const std::vector<std::pair<std::string, std::string>> failures = {
      {"", "no answer at all"},
      {chunked({text, finish, done}, false), "no last chunk: the stream was cut"},
      {chunked({text, finish.substr(0, 20)}, true), "cut mid-event"},
      {chunked({text, finish}, true), "no [DONE]"},
      {chunked({text, done}, true), "no finish_reason"},
      {chunked({text, error}, true), "an error without [DONE]"},
      {chunked({text, finish, done, text}, true), "an event after [DONE]"},
      {chunked({"data: {not json\n\n", done}, true), "unparsable"},
      {"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
       "a 500 without an error object"},
      {"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 40\r\n\r\n{\"error\"",
       "a body cut short"},
  };
  for (const auto& [raw, what] : failures) {
    StreamResult r = verdict(raw);
    EXPECT_EQ(r.outcome, Outcome::kFailure) << what;
    EXPECT_FALSE(r.detail.empty()) << what;
  }
}

}  // namespace
}  // namespace strata::testing
