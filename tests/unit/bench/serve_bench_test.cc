// `strata bench serve` against a scripted OpenAI-style SSE server on 127.0.0.1:0: token counts,
// timing consistency, keep-alive, events split across reads, HTTP and mid-stream errors, the
// usage check, open-loop arrivals, and the SSE parser on its own.
#include "bench/serve_bench.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"

namespace strata::bench {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using std::chrono::milliseconds;
using ::testing::HasSubstr;

// How the server answers each POST.
struct Script {
  int status = 200;  // != 200: answer with `error_body`
  std::string error_body;
  int tokens = 4;               // token chunks streamed
  milliseconds first_delay{0};  // request received → first token
  milliseconds gap{0};          // between tokens
  bool split = false;           // every event in two writes, 2 ms apart
  bool one_write = false;       // the whole stream in one write
  int error_after = -1;         // >= 0: an error event after this many tokens
  int usage_extra = 0;          // added to usage.completion_tokens
  milliseconds stall{0};        // before the response headers
};

struct Received {
  std::string target, authorization;
  nlohmann::json body;
};

// A few dozen lines of Asio: HTTP/1.1 keep-alive, chunked SSE responses paced by timers.
class FakeServer {
 public:
  explicit FakeServer(Script script)
      : script_(std::move(script)), acceptor_(ioc_, {asio::ip::make_address("127.0.0.1"), 0}) {
    asio::co_spawn(ioc_, Accept(), asio::detached);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~FakeServer() {
    ioc_.stop();
    thread_.join();
  }
  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }
  std::vector<Received> received() {
    std::lock_guard<std::mutex> lock(mu_);
    return received_;
  }
  int connections() {
    std::lock_guard<std::mutex> lock(mu_);
    return connections_;
  }
  const Script& script() const { return script_; }
  int max_in_flight() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_in_flight_;
  }

 private:
  awaitable<void> Accept() {
    for (;;) {
      tcp::socket socket = co_await acceptor_.async_accept(use_awaitable);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++connections_;
      }
      asio::co_spawn(ioc_, Session(std::move(socket)), asio::detached);
    }
  }

  awaitable<void> Pause(milliseconds d) {
    asio::steady_timer timer(ioc_, d);
    co_await timer.async_wait(use_awaitable);
  }

  static std::string Chunk(const std::string& data) {
    char size[16];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    return size + data + "\r\n";
  }

  awaitable<void> Session(tcp::socket socket) {
    boost::system::error_code ec;
    std::string in;
    for (;;) {
      const size_t head = co_await asio::async_read_until(
          socket, asio::dynamic_buffer(in), "\r\n\r\n", asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
      const std::string header = in.substr(0, head);
      in.erase(0, head);
      auto field = [&](const std::string& name) {
        const size_t at = header.find("\r\n" + name + ": ");
        if (at == std::string::npos) return std::string();
        const size_t begin = at + name.size() + 4;
        return header.substr(begin, header.find("\r\n", begin) - begin);
      };
      const size_t length =
          field("Content-Length").empty() ? 0 : std::stoul(field("Content-Length"));
      if (in.size() < length) {
        co_await asio::async_read(socket, asio::dynamic_buffer(in),
                                  asio::transfer_exactly(length - in.size()),
                                  asio::redirect_error(use_awaitable, ec));
        if (ec) co_return;
      }
      Received r{header.substr(header.find(' ') + 1, header.find(" HTTP/") - header.find(' ') - 1),
                 field("Authorization"),
                 length > 0 ? nlohmann::json::parse(in.substr(0, length)) : nlohmann::json()};
      in.erase(0, length);
      if (r.target == "/v1/models") {
        const std::string body =
            R"({"object":"list","data":[{"id":"fake-model","object":"model"}]})";
        co_await Write(socket, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
                                   "\r\n\r\n" + body);
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        received_.push_back(r);
        max_in_flight_ = std::max(max_in_flight_, ++in_flight_);
      }
      const bool ok = co_await Respond(socket, r);
      {
        std::lock_guard<std::mutex> lock(mu_);
        --in_flight_;
      }
      if (!ok) co_return;
    }
  }

  awaitable<bool> Write(tcp::socket& socket, const std::string& bytes) {
    boost::system::error_code ec;
    co_await asio::async_write(socket, asio::buffer(bytes),
                               asio::redirect_error(use_awaitable, ec));
    co_return !ec;
  }

  awaitable<bool> Respond(tcp::socket& socket, const Received& r) {
    const Script& s = script_;
    if (s.stall.count() > 0) co_await Pause(s.stall);
    if (s.status != 200) {
      co_return co_await Write(socket,
                               "HTTP/1.1 " + std::to_string(s.status) +
                                   " Error\r\nContent-Type: application/json\r\nContent-Length: " +
                                   std::to_string(s.error_body.size()) + "\r\n\r\n" + s.error_body);
    }
    if (!co_await Write(socket,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: "
                        "chunked\r\n\r\n")) {
      co_return false;
    }
    const bool chat = r.target == "/v1/chat/completions";
    std::vector<std::string> events;
    if (chat)
      events.push_back(
          R"({"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})");
    for (int i = 0; i < s.tokens; ++i) {
      if (i == s.error_after) {
        events.push_back(R"({"error":{"message":"worker lost","type":"server_error","code":500}})");
        break;
      }
      const std::string finish = !chat && i + 1 == s.tokens ? R"("length")" : "null";
      events.push_back(chat ? R"({"choices":[{"index":0,"delta":{"content":" w)" +
                                  std::to_string(i) + R"("},"finish_reason":null}]})"
                            : R"({"choices":[{"index":0,"text":" w)" + std::to_string(i) +
                                  R"(","finish_reason":)" + finish + "}]}");
    }
    if (chat && s.error_after < 0)
      events.push_back(R"({"choices":[{"index":0,"delta":{},"finish_reason":"length"}]})");
    const int prompt = r.body.contains("prompt") && r.body["prompt"].is_array()
                           ? static_cast<int>(r.body["prompt"].size())
                           : 7;
    events.push_back(R"({"choices":[],"usage":{"prompt_tokens":)" + std::to_string(prompt) +
                     R"(,"completion_tokens":)" + std::to_string(s.tokens + s.usage_extra) +
                     R"(,"total_tokens":0,"prompt_tokens_details":{"cached_tokens":3}}})");
    events.push_back("[DONE]");
    std::string all;
    for (size_t i = 0; i < events.size(); ++i) {
      const std::string event = "data: " + events[i] + "\n\n";
      if (s.one_write) {
        all += event;
        continue;
      }
      if (chat && i == 0) {
        // the role announcement goes out at once
      } else if (i == (chat ? 1u : 0u)) {
        co_await Pause(s.first_delay);
      } else if (s.gap.count() > 0) {
        co_await Pause(s.gap);
      }
      if (s.split) {
        const size_t half = event.size() / 2;
        if (!co_await Write(socket, Chunk(event.substr(0, half)))) co_return false;
        co_await Pause(milliseconds(2));
        if (!co_await Write(socket, Chunk(event.substr(half)))) co_return false;
      } else if (!co_await Write(socket, Chunk(event))) {
        co_return false;
      }
    }
    if (s.one_write) {
      co_await Pause(s.first_delay);
      if (!co_await Write(socket, Chunk(all))) co_return false;
    }
    co_return co_await Write(socket, "0\r\n\r\n");
  }

  const Script script_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Received> received_;
  int connections_ = 0, in_flight_ = 0, max_in_flight_ = 0;
};

ServeBenchOptions Options(const FakeServer& server) {
  ServeBenchOptions o;
  o.url = server.url();
  o.model = "m";
  o.concurrency = 2;
  o.num_requests = 6;
  o.prompt_tokens = 32;
  o.output_tokens = server.script().tokens;
  o.warmup = 0;
  o.timeout_s = 20;
  return o;
}

double Sum(const std::vector<double>& v) {
  double s = 0;
  for (const double x : v) s += x;
  return s;
}

// Every successful request: tokens counted, one ITL sample per gap, and the times consistent
// with each other and with the server's pacing.
void ExpectConsistent(const ServeBenchResult& r, const Script& s) {
  const double first = std::chrono::duration<double>(s.first_delay).count();
  const double gaps = std::chrono::duration<double>(s.gap).count() * (s.tokens - 1);
  for (const RequestRecord& q : r.requests) {
    ASSERT_TRUE(q.ok) << q.error;
    EXPECT_EQ(q.http_status, 200);
    EXPECT_EQ(q.streamed_tokens, s.tokens);
    EXPECT_EQ(q.completion_tokens, s.tokens);
    EXPECT_EQ(q.cached_tokens, 3);
    EXPECT_EQ(q.itl_s.size(), static_cast<size_t>(s.tokens - 1));
    EXPECT_GE(q.ttft_s, first);
    EXPECT_GE(q.e2e_s, first + gaps);
    EXPECT_LE(q.ttft_s + Sum(q.itl_s), q.e2e_s + 1e-9);
    for (const double itl : q.itl_s) EXPECT_GE(itl, 0);
  }
}

TEST(ServeBenchTest, CountsTokensAndTimesEveryGap) {
  Script script{.tokens = 5, .first_delay = milliseconds(30), .gap = milliseconds(5)};
  FakeServer server(script);
  ServeBenchOptions o = Options(server);
  o.api_key = "sk-test";
  o.warmup = 2;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completed, 6);
  EXPECT_EQ(r->failed, 0);
  ASSERT_EQ(r->requests.size(), 6u);
  ExpectConsistent(*r, script);
  EXPECT_EQ(r->output_tokens, 30);
  EXPECT_EQ(r->input_tokens, 6 * 32);
  EXPECT_EQ(r->itl_s.count, 6 * 4);
  EXPECT_EQ(r->tpot_s.count, 6);
  EXPECT_GE(r->ttft_s.p50, 0.030);
  EXPECT_LE(r->ttft_s.min, r->ttft_s.p50);
  EXPECT_LE(r->ttft_s.p50, r->ttft_s.p90);
  EXPECT_LE(r->ttft_s.p90, r->ttft_s.p99);
  EXPECT_LE(r->ttft_s.p99, r->ttft_s.max);
  EXPECT_GT(r->request_throughput, 0);
  EXPECT_NEAR(r->output_throughput, 5 * r->request_throughput, 1e-6);
  EXPECT_GT(r->total_throughput, r->output_throughput);

  // 2 warm-up + 6 measured requests, as asked, on at most `concurrency` kept-alive connections.
  std::vector<Received> got = server.received();
  ASSERT_EQ(got.size(), 8u);
  EXPECT_LE(server.connections(), 2);
  EXPECT_LE(server.max_in_flight(), 2);
  std::vector<std::vector<int>> prompts;
  for (const Received& q : got) {
    EXPECT_EQ(q.target, "/v1/completions");
    EXPECT_EQ(q.authorization, "Bearer sk-test");
    EXPECT_EQ(q.body["model"], "m");
    EXPECT_EQ(q.body["max_tokens"], 5);
    EXPECT_EQ(q.body["ignore_eos"], true);
    EXPECT_EQ(q.body["stream"], true);
    EXPECT_EQ(q.body["stream_options"]["include_usage"], true);
    ASSERT_TRUE(q.body["prompt"].is_array());
    std::vector<int> ids = q.body["prompt"].get<std::vector<int>>();
    EXPECT_EQ(ids.size(), 32u);
    for (const int id : ids) {
      EXPECT_GE(id, 1000);
      EXPECT_LT(id, 30000);
    }
    prompts.push_back(ids);
  }
  std::sort(prompts.begin(), prompts.end());
  EXPECT_EQ(std::unique(prompts.begin(), prompts.end()), prompts.end())
      << "every request, warm-up too, has its own prompt";
}

TEST(ServeBenchTest, EventsSplitAcrossReads) {
  Script script{.tokens = 4, .first_delay = milliseconds(5), .split = true};
  FakeServer server(script);
  absl::StatusOr<ServeBenchResult> r = RunServeBench(Options(server));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completed, 6);
  ExpectConsistent(*r, script);
}

TEST(ServeBenchTest, ManyEventsInOneRead) {
  Script script{.tokens = 6, .first_delay = milliseconds(5), .one_write = true};
  FakeServer server(script);
  absl::StatusOr<ServeBenchResult> r = RunServeBench(Options(server));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completed, 6);
  ExpectConsistent(*r, script);
}

TEST(ServeBenchTest, ChatSkipsRoleAndFinishChunks) {
  Script script{.tokens = 3, .first_delay = milliseconds(10), .gap = milliseconds(2)};
  FakeServer server(script);
  ServeBenchOptions o = Options(server);
  o.endpoint = "chat";
  o.model.clear();  // looked up from /v1/models
  o.io_threads = 2;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model, "fake-model");
  EXPECT_EQ(r->completed, 6);
  ExpectConsistent(*r, script);
  for (const Received& q : server.received()) {
    EXPECT_EQ(q.target, "/v1/chat/completions");
    EXPECT_EQ(q.body["model"], "fake-model");
    ASSERT_EQ(q.body["messages"].size(), 1u);
    const std::string content = q.body["messages"][0]["content"];
    EXPECT_EQ(std::count(content.begin(), content.end(), ' '), 31) << "32 words";
  }
}

TEST(ServeBenchTest, HttpErrorsAreFailuresWithTheirMessage) {
  FakeServer server(
      {.status = 429,
       .error_body = R"({"error":{"message":"quota exceeded","type":"rate_limit_error"}})"});
  absl::StatusOr<ServeBenchResult> r = RunServeBench(Options(server));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completed, 0);
  EXPECT_EQ(r->failed, 6);
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_EQ(r->errors[0].first, "HTTP 429: quota exceeded");
  EXPECT_EQ(r->errors[0].second, 6);
  EXPECT_EQ(r->requests[0].http_status, 429);
  EXPECT_LE(server.connections(), 2) << "error responses keep the connection";
}

TEST(ServeBenchTest, WarmupThatAllFailsIsAnError) {
  FakeServer server(
      {.status = 401,
       .error_body = R"({"error":{"message":"bad API key","type":"invalid_request_error"}})"});
  ServeBenchOptions o = Options(server);
  o.warmup = 1;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("HTTP 401: bad API key"));
  EXPECT_EQ(server.received().size(), 1u) << "the measured run does not start";
}

TEST(ServeBenchTest, MidStreamErrorEventIsAFailure) {
  FakeServer server({.tokens = 4, .error_after = 2});
  absl::StatusOr<ServeBenchResult> r = RunServeBench(Options(server));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->failed, 6);
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_EQ(r->errors[0].first, "error event: worker lost");
  EXPECT_EQ(r->requests[0].streamed_tokens, 2);
}

TEST(ServeBenchTest, UsageThatDisagreesWithTheStreamIsAFailure) {
  // More token chunks than the usage counts is wrong; fewer is fine (tokens may share a chunk).
  FakeServer server({.tokens = 5, .usage_extra = -1});
  absl::StatusOr<ServeBenchResult> r = RunServeBench(Options(server));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->failed, 6);
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_EQ(r->errors[0].first, "usage.completion_tokens 4 < 5 streamed token chunks");
}

TEST(ServeBenchTest, FewerTokensThanMaxTokensIsAFailure) {
  FakeServer server({.tokens = 3});
  ServeBenchOptions o = Options(server);
  o.output_tokens = 5;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->failed, 6);
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_THAT(r->errors[0].first, HasSubstr("3 tokens generated, want 5"));
}

TEST(ServeBenchTest, SlowServerTimesOut) {
  FakeServer server({.stall = milliseconds(5000)});
  ServeBenchOptions o = Options(server);
  o.num_requests = 2;
  o.timeout_s = 0.2;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->failed, 2);
  ASSERT_EQ(r->errors.size(), 1u);
  EXPECT_THAT(r->errors[0].first, HasSubstr("timed out after 0.2 s"));
}

TEST(ServeBenchTest, UnreachableServer) {
  std::string url;
  {
    asio::io_context ioc;
    tcp::acceptor closed(ioc, {asio::ip::make_address("127.0.0.1"), 0});
    url = "http://127.0.0.1:" + std::to_string(closed.local_endpoint().port());
  }
  ServeBenchOptions o;
  o.url = url;
  o.model = "m";
  o.num_requests = 2;
  o.warmup = 0;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->failed, 2);
  EXPECT_THAT(r->errors[0].first, HasSubstr("connect: "));

  o.warmup = 1;
  EXPECT_EQ(RunServeBench(o).status().code(), absl::StatusCode::kUnavailable);
  o.model.clear();
  EXPECT_THAT(std::string(RunServeBench(o).status().message()), HasSubstr("/v1/models"));
}

TEST(ServeBenchTest, BadOptions) {
  ServeBenchOptions o;
  o.url = "https://example.com";
  EXPECT_EQ(RunServeBench(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.url = "127.0.0.1:8000";
  EXPECT_EQ(RunServeBench(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.url = "http://127.0.0.1:99999";
  EXPECT_EQ(RunServeBench(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.url = "http://127.0.0.1:8000";
  o.endpoint = "embeddings";
  EXPECT_EQ(RunServeBench(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServeBenchTest, RequestRateIssuesTheRequestedCountAtSeededArrivals) {
  Script script{.tokens = 2, .first_delay = milliseconds(1)};
  FakeServer server(script);
  ServeBenchOptions o = Options(server);
  o.request_rate = 400;
  o.num_requests = 20;
  o.output_tokens = 2;
  o.seed = 7;
  o.io_threads = 2;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completed, 20);
  EXPECT_EQ(server.received().size(), 20u);
  ExpectConsistent(*r, script);
  EXPECT_EQ(r->requests[0].scheduled_s, 0);
  for (size_t i = 1; i < r->requests.size(); ++i) {
    EXPECT_GT(r->requests[i].scheduled_s, r->requests[i - 1].scheduled_s);
    EXPECT_GE(r->requests[i].start_s, r->requests[i].scheduled_s)
        << "no request leaves before it is due";
  }
  EXPECT_GE(r->duration_s, r->requests.back().scheduled_s);

  absl::StatusOr<ServeBenchResult> again = RunServeBench(o);
  ASSERT_TRUE(again.ok()) << again.status();
  o.seed = 8;
  absl::StatusOr<ServeBenchResult> other = RunServeBench(o);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(again->requests[19].scheduled_s, r->requests[19].scheduled_s);
  EXPECT_NE(other->requests[19].scheduled_s, r->requests[19].scheduled_s);
}

TEST(ServeBenchTest, TextPromptsForCompletions) {
  FakeServer server({.tokens = 5});
  ServeBenchOptions o = Options(server);
  o.text_prompt = true;
  o.num_requests = 1;
  ASSERT_TRUE(RunServeBench(o).ok());
  const std::vector<Received> got = server.received();
  ASSERT_EQ(got.size(), 1u);
  const std::string prompt = got[0].body["prompt"];
  EXPECT_EQ(std::count(prompt.begin(), prompt.end(), ' '), 31);
}

TEST(ServeBenchTest, FiguresCarryTheLabelAndMilliseconds) {
  ServeBenchResult r;
  r.label = "serve_x";
  r.completed = 3;
  r.ttft_s.count = 3;
  r.ttft_s.p50 = 0.25;
  r.ttft_s.p99 = 0.5;
  r.request_throughput = 2;
  std::vector<Figure> figures = ServeBenchFigures(r);
  std::vector<std::string> names;
  for (const Figure& f : figures) names.push_back(f.name);
  EXPECT_THAT(names, ::testing::ElementsAre("serve_x_ttft_p50", "serve_x_ttft_p99",
                                            "serve_x_req_per_s", "serve_x_output_tok_per_s",
                                            "serve_x_total_tok_per_s", "serve_x_failed"));
  EXPECT_EQ(figures[0].value, 250);
  EXPECT_EQ(figures[0].unit, "ms");
  EXPECT_FALSE(figures[0].higher_is_better);
  EXPECT_EQ(figures[2].value, 2);
}

TEST(ServeBenchTest, DefaultLabelNamesTheLoad) {
  FakeServer server({.tokens = 5});
  ServeBenchOptions o = Options(server);
  o.num_requests = 1;
  absl::StatusOr<ServeBenchResult> r = RunServeBench(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->label, "serve_completions_in32_out5_c2");
}

TEST(SummarizeTest, LinearPercentiles) {
  Distribution d = Summarize({4, 1, 3, 2});
  EXPECT_EQ(d.count, 4);
  EXPECT_DOUBLE_EQ(d.mean, 2.5);
  EXPECT_DOUBLE_EQ(d.min, 1);
  EXPECT_DOUBLE_EQ(d.max, 4);
  EXPECT_DOUBLE_EQ(d.p50, 2.5);
  EXPECT_DOUBLE_EQ(d.p90, 3.7);
  EXPECT_DOUBLE_EQ(d.p99, 3.97);
  EXPECT_EQ(Summarize({}).count, 0);
}

TEST(SseParserTest, SameEventsHoweverTheBytesArrive) {
  const std::string stream =
      ": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\r\ndata: {\"b\":\r\ndata: "
      "2}\r\n\r\ndata:[DONE]\n\n";
  const std::vector<std::string> want = {"{\"a\":1}", "{\"b\":\n2}", "[DONE]"};
  for (size_t step = 1; step <= stream.size(); ++step) {
    SseParser parser;
    std::vector<std::string> got;
    for (size_t at = 0; at < stream.size(); at += step) {
      parser.Feed(std::string_view(stream).substr(at, step),
                  [&](std::string_view data) { got.emplace_back(data); });
    }
    EXPECT_EQ(got, want) << "fed " << step << " bytes at a time";
  }
}

}  // namespace
}  // namespace strata::bench
