#include "bench/serve_bench.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <memory>
#include <random>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"
#include "simdjson.h"

namespace strata::bench {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxErrorBody = 64 * 1024;  // of a non-200 response, kept for its message
constexpr int32_t kMinTokenId = 1000;        // prompt ids: clear of special and byte tokens
constexpr int32_t kMaxTokenId = 29999;

// Words that are one token each (with their leading space) in BPE vocabularies like DeepSeek's,
// so a prompt of N words is about N tokens.
constexpr std::array<const char*, 64> kWords = {
    "the",   "of",    "and",   "to",    "in",    "is",   "that",  "for",   "it",    "as",
    "was",   "with",  "be",    "by",    "on",    "not",  "he",    "this",  "are",   "or",
    "his",   "from",  "at",    "which", "but",   "have", "an",    "had",   "they",  "you",
    "were",  "their", "one",   "all",   "we",    "can",  "her",   "has",   "there", "been",
    "if",    "more",  "when",  "will",  "would", "who",  "so",    "no",    "time",  "people",
    "water", "house", "world", "day",   "year",  "city", "light", "small", "large", "river",
    "long",  "black", "white", "green"};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

uint64_t Mix(uint64_t seed, uint64_t index) {  // SplitMix64 of the pair: one stream per request
  uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", static_cast<int>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

struct Target {
  std::string host;
  std::string port = "80";
  std::string prefix;  // path before /v1, without a trailing '/'
};

absl::StatusOr<Target> ParseUrl(const std::string& url) {
  constexpr std::string_view kScheme = "http://";
  if (url.rfind("https://", 0) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--url ", url, ": https is not supported; use the router's http:// port"));
  }
  if (url.rfind(kScheme, 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--url ", url, ": want http://host[:port]"));
  }
  std::string rest = url.substr(kScheme.size());
  Target target;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    target.prefix = rest.substr(slash);
    rest.resize(slash);
    while (!target.prefix.empty() && target.prefix.back() == '/') target.prefix.pop_back();
  }
  const size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']', colon) == std::string::npos) {
    target.port = rest.substr(colon + 1);
    rest.resize(colon);
    uint32_t port = 0;
    if (!absl::SimpleAtoi(target.port, &port) || port == 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--url ", url, ": bad port '", target.port, "'"));
    }
  }
  if (rest.size() >= 2 && rest.front() == '[' && rest.back() == ']')
    rest = rest.substr(1, rest.size() - 2);
  if (rest.empty()) return absl::InvalidArgumentError(absl::StrCat("--url ", url, ": no host"));
  target.host = rest;
  return target;
}

absl::Status Validate(const ServeBenchOptions& o) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (o.endpoint != "completions" && o.endpoint != "chat") {
    return bad("--endpoint ", o.endpoint, ": want completions or chat");
  }
  if (o.request_rate < 0 || !std::isfinite(o.request_rate))
    return bad("--request-rate must be > 0");
  if (o.request_rate == 0 && o.concurrency < 1) return bad("--concurrency must be at least 1");
  if (o.num_requests < 1) return bad("--num-requests must be at least 1");
  if (o.prompt_tokens < 1) return bad("--prompt-tokens must be at least 1");
  if (o.output_tokens < 1) return bad("--output-tokens must be at least 1");
  if (o.warmup < 0) return bad("--warmup must be 0 or more");
  if (!(o.timeout_s > 0)) return bad("--timeout must be > 0 seconds");
  if (o.io_threads < 1 || o.io_threads > 64) return bad("--io-threads must be 1..64");
  return absl::OkStatus();
}

// What every request of a run shares; read-only while the lanes run.
struct Plan {
  const ServeBenchOptions* options = nullptr;
  std::string host;  // Host header
  std::string path;  // /v1/completions or /v1/chat/completions, after the URL's prefix
  std::string authorization;
  std::string model;
  tcp::resolver::results_type endpoints;
};

std::string BuildBody(const Plan& plan, int64_t prompt_index) {
  const ServeBenchOptions& o = *plan.options;
  std::mt19937_64 rng(Mix(o.seed, static_cast<uint64_t>(prompt_index)));
  const bool chat = o.endpoint == "chat";
  std::string prompt;
  prompt.reserve(static_cast<size_t>(o.prompt_tokens) * 7);
  if (chat || o.text_prompt) {
    std::uniform_int_distribution<size_t> word(0, kWords.size() - 1);
    prompt += '"';
    for (int64_t i = 0; i < o.prompt_tokens; ++i) {
      if (i > 0) prompt += ' ';
      prompt += kWords[word(rng)];
    }
    prompt += '"';
  } else {
    std::uniform_int_distribution<int32_t> id(kMinTokenId, kMaxTokenId);
    prompt += '[';
    for (int64_t i = 0; i < o.prompt_tokens; ++i) {
      if (i > 0) prompt += ',';
      absl::StrAppend(&prompt, id(rng));
    }
    prompt += ']';
  }
  std::string body = absl::StrCat("{\"model\":", JsonString(plan.model));
  if (chat) {
    absl::StrAppend(&body, ",\"messages\":[{\"role\":\"user\",\"content\":", prompt, "}]");
  } else {
    absl::StrAppend(&body, ",\"prompt\":", prompt);
  }
  absl::StrAppend(
      &body, ",\"max_tokens\":", o.output_tokens,
      ",\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
  return body;
}

// {"error":{"message":...}} (or {"error":"..."}) → the message; anything else → the text itself.
std::string ErrorMessage(simdjson::dom::parser& json, std::string_view body) {
  simdjson::dom::element doc;
  if (json.parse(body.data(), body.size()).get(doc) == simdjson::SUCCESS) {
    simdjson::dom::element error;
    if (doc["error"].get(error) == simdjson::SUCCESS) {
      std::string_view message;
      if (error.get(message) == simdjson::SUCCESS) return std::string(message);
      if (error["message"].get(message) == simdjson::SUCCESS) return std::string(message);
      return simdjson::minify(error);
    }
  }
  std::string text(body.substr(0, 200));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return text.empty() ? "(empty body)" : text;
}

struct Connection {
  explicit Connection(asio::io_context& ioc) : stream(ioc) {}
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  std::array<char, 16 * 1024> body{};  // body bytes of one read, before SSE parsing
  bool connected = false;
};

// One io_context run by one thread, with the connections of the requests it carries. Everything
// in it is touched only by that thread.
struct Lane {
  asio::io_context ioc{1};
  std::vector<std::unique_ptr<Connection>> idle;  // keep-alive connections between requests
  simdjson::dom::parser json;  // used between suspensions only, so requests share it
};

// One batch of requests (the warm-up, then the measured run).
struct Phase {
  int64_t count = 0;
  int64_t first_prompt = 0;      // prompt index of request 0 (warm-up prompts differ from measured)
  int64_t concurrency = 1;       // closed loop
  std::vector<double> arrivals;  // open loop: offsets from t0 in seconds; empty: closed loop
  Clock::time_point t0;
  std::atomic<int64_t> next{0};
  std::vector<RequestRecord> records;
};

// The stream of one request as its SSE events arrive.
class StreamReader {
 public:
  StreamReader(const ServeBenchOptions& options, RequestRecord& record, Clock::time_point start)
      : chat_(options.endpoint == "chat"), record_(record), start_(start) {}

  // One event's data, received at `now`.
  void Event(simdjson::dom::parser& json, std::string_view data, Clock::time_point now) {
    if (done_ || !error_.empty()) return;
    if (data == "[DONE]") {
      done_ = true;
      record_.e2e_s = Seconds(now - start_);
      return;
    }
    simdjson::dom::element doc;
    if (json.parse(data.data(), data.size()).get(doc) != simdjson::SUCCESS) {
      error_ = absl::StrCat("bad SSE data: ", ToAbsl(data.substr(0, 120)));
      return;
    }
    if (doc["error"].error() == simdjson::SUCCESS) {
      error_ = absl::StrCat("error event: ", ErrorMessage(json, data));
      return;
    }
    simdjson::dom::object usage;
    if (doc["usage"].get(usage) == simdjson::SUCCESS) {
      record_.has_usage = true;
      int64_t n = 0;
      if (usage["prompt_tokens"].get(n) == simdjson::SUCCESS) record_.prompt_tokens = n;
      if (usage["completion_tokens"].get(n) == simdjson::SUCCESS) record_.completion_tokens = n;
      if (usage.at_pointer("/prompt_tokens_details/cached_tokens").get(n) == simdjson::SUCCESS) {
        record_.cached_tokens = n;
      }
    }
    simdjson::dom::array choices;
    simdjson::dom::object choice;
    if (doc["choices"].get(choices) != simdjson::SUCCESS || choices.size() == 0 ||
        choices.at(0).get(choice) != simdjson::SUCCESS) {
      return;  // the usage chunk, or a keep-alive
    }
    if (IsToken(choice)) Token(now);
  }

  // Fills the record once the response has ended (`transport_error` empty when it ended well).
  void Finish(const std::string& transport_error, int64_t want_tokens) {
    RequestRecord& r = record_;
    if (!transport_error.empty()) {
      r.error = transport_error;
    } else if (!error_.empty()) {
      r.error = error_;
    } else if (!done_) {
      r.error = "stream ended without data: [DONE]";
    } else if (r.streamed_tokens == 0) {
      r.error = "no tokens streamed";
    } else if (!r.has_usage) {
      r.error = "no usage chunk (stream_options.include_usage)";
    } else if (r.streamed_tokens > r.completion_tokens) {
      // Fewer chunks than tokens is fine: a server may send several tokens in one chunk (it
      // coalesces while the client is slow, or holds back a partial character).
      r.error = absl::StrCat("usage.completion_tokens ", r.completion_tokens,
                             " < ", r.streamed_tokens, " streamed token chunks");
    } else if (r.completion_tokens != want_tokens) {
      r.error = absl::StrCat(r.completion_tokens, " tokens generated, want ", want_tokens,
                             " (max_tokens with ignore_eos)");
    }
    r.ok = r.error.empty();
  }

 private:
  // A chunk carries a token when its text is non-empty, or empty but neither the chat role
  // announcement nor the closing chunk that only brings finish_reason.
  bool IsToken(simdjson::dom::object choice) const {
    std::string_view text;
    bool has_text = false;
    bool bookkeeping = false;
    if (chat_) {
      simdjson::dom::object delta;
      if (choice["delta"].get(delta) == simdjson::SUCCESS) {
        has_text = delta["content"].get(text) == simdjson::SUCCESS;
        bookkeeping = delta["role"].error() == simdjson::SUCCESS;
      }
    } else {
      has_text = choice["text"].get(text) == simdjson::SUCCESS;
    }
    std::string_view finish;
    bookkeeping = bookkeeping || choice["finish_reason"].get(finish) == simdjson::SUCCESS;
    return has_text && (!text.empty() || !bookkeeping);
  }

  void Token(Clock::time_point now) {
    if (record_.streamed_tokens == 0) {
      record_.ttft_s = Seconds(now - start_);
    } else {
      record_.itl_s.push_back(Seconds(now - last_token_));
    }
    last_token_ = now;
    ++record_.streamed_tokens;
  }

  const bool chat_;
  RequestRecord& record_;
  const Clock::time_point start_;
  Clock::time_point last_token_;
  bool done_ = false;
  std::string error_;  // an error event or unparsable data
};

std::string Describe(const char* what, const beast::error_code& ec, double timeout_s) {
  if (ec == beast::error::timeout)
    return absl::StrCat("timed out after ", timeout_s, " s (", what, ")");
  return absl::StrCat(what, ": ", ec.message());
}

struct Outcome {
  bool keep = false;   // the connection may carry the next request
  bool retry = false;  // a reused connection failed before any response: try a new one
};

// Sends `request` on `c` and reads the streamed response into `record`.
awaitable<Outcome> Exchange(Lane& lane, const Plan& plan, Connection& c,
                            http::request<http::string_body>& request, RequestRecord& record,
                            Clock::time_point t0) {
  const ServeBenchOptions& o = *plan.options;
  const double scheduled = record.scheduled_s;
  record = RequestRecord{};
  record.scheduled_s = scheduled;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(o.timeout_s));
  record.start_s = Seconds(start - t0);
  StreamReader reader(o, record, start);
  const bool reused = c.connected;
  beast::error_code ec;

  if (!c.connected) {
    c.stream.expires_at(deadline);
    co_await c.stream.async_connect(plan.endpoints, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      reader.Finish(Describe("connect", ec, o.timeout_s), o.output_tokens);
      co_return Outcome{};
    }
    c.connected = true;
    c.stream.socket().set_option(tcp::no_delay(true), ec);
  }
  c.stream.expires_at(deadline);
  co_await http::async_write(c.stream, request, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    reader.Finish(Describe("send", ec, o.timeout_s), o.output_tokens);
    co_return Outcome{.retry = reused};
  }
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  co_await http::async_read_header(c.stream, c.buffer, parser,
                                   asio::redirect_error(use_awaitable, ec));
  if (ec) {
    reader.Finish(Describe("read", ec, o.timeout_s), o.output_tokens);
    co_return Outcome{.retry = reused && ec != beast::error::timeout};
  }
  record.http_status = parser.get().result_int();
  const bool streaming = record.http_status == 200;
  std::string error_body;
  SseParser sse;
  while (!parser.is_done()) {
    parser.get().body().data = c.body.data();
    parser.get().body().size = c.body.size();
    co_await http::async_read_some(c.stream, c.buffer, parser,
                                   asio::redirect_error(use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    if (ec && parser.is_done()) ec = {};  // a body that ends with the connection
    if (ec) break;
    const Clock::time_point now = Clock::now();
    const std::string_view bytes(c.body.data(), c.body.size() - parser.get().body().size);
    if (streaming) {
      sse.Feed(bytes, [&](std::string_view data) { reader.Event(lane.json, data, now); });
    } else if (error_body.size() < kMaxErrorBody) {
      error_body.append(bytes.substr(0, kMaxErrorBody - error_body.size()));
    }
  }
  std::string failure;
  if (ec) {
    failure = Describe("read", ec, o.timeout_s);
  } else if (!streaming) {
    failure = absl::StrCat("HTTP ", record.http_status, ": ", ErrorMessage(lane.json, error_body));
  }
  reader.Finish(failure, o.output_tokens);
  co_return Outcome{.keep = !ec && parser.get().keep_alive()};
}

http::request<http::string_body> MakeRequest(const Plan& plan, std::string body) {
  http::request<http::string_body> request{http::verb::post, plan.path, 11};
  request.set(http::field::host, plan.host);
  request.set(http::field::user_agent, "strata-bench-serve");
  request.set(http::field::content_type, "application/json");
  request.set(http::field::accept, "text/event-stream");
  if (!plan.authorization.empty()) request.set(http::field::authorization, plan.authorization);
  request.keep_alive(true);
  request.body() = std::move(body);
  request.prepare_payload();
  return request;
}

// One request of `phase`, on a keep-alive connection of `lane` or a new one.
awaitable<void> Send(Lane& lane, const Plan& plan, Phase& phase, int64_t index) {
  RequestRecord& record = phase.records[static_cast<size_t>(index)];
  try {
    http::request<http::string_body> request =
        MakeRequest(plan, BuildBody(plan, phase.first_prompt + index));
    for (int attempt = 0;; ++attempt) {
      std::unique_ptr<Connection> c;
      if (!lane.idle.empty()) {
        c = std::move(lane.idle.back());
        lane.idle.pop_back();
      } else {
        c = std::make_unique<Connection>(lane.ioc);
      }
      const Outcome outcome = co_await Exchange(lane, plan, *c, request, record, phase.t0);
      if (outcome.keep) {
        c->stream.expires_never();
        lane.idle.push_back(std::move(c));
      }
      if (!outcome.retry || attempt > 0) break;  // a stale keep-alive connection gets one retry
    }
  } catch (const std::exception& e) {
    record.ok = false;
    record.error = absl::StrCat("client error: ", e.what());
  }
}

awaitable<void> ClosedLoopWorker(Lane& lane, const Plan& plan, Phase& phase) {
  for (int64_t i = phase.next++; i < phase.count; i = phase.next++)
    co_await Send(lane, plan, phase, i);
}

// Starts the open-loop requests whose index ≡ `first` (mod `stride`) at their arrival times.
awaitable<void> OpenLoopDispatcher(Lane& lane, const Plan& plan, Phase& phase, int64_t first,
                                   int64_t stride) {
  asio::steady_timer timer(lane.ioc);
  for (int64_t i = first; i < phase.count; i += stride) {
    const double due = phase.arrivals[static_cast<size_t>(i)];
    timer.expires_at(
        phase.t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(due)));
    beast::error_code ec;
    co_await timer.async_wait(asio::redirect_error(use_awaitable, ec));
    asio::co_spawn(lane.ioc, Send(lane, plan, phase, i), [](std::exception_ptr) {});
  }
}

// Runs `phase` on the lanes, one thread each, and returns when every request has ended.
void RunPhase(std::vector<std::unique_ptr<Lane>>& lanes, const Plan& plan, Phase& phase) {
  phase.records.assign(static_cast<size_t>(phase.count), RequestRecord{});
  for (size_t i = 0; i < phase.arrivals.size(); ++i)
    phase.records[i].scheduled_s = phase.arrivals[i];
  const int64_t n = static_cast<int64_t>(lanes.size());
  for (auto& lane : lanes) lane->ioc.restart();
  phase.t0 = Clock::now();
  if (phase.arrivals.empty()) {
    for (int64_t w = 0; w < std::min(phase.concurrency, phase.count); ++w) {
      Lane& lane = *lanes[static_cast<size_t>(w % n)];
      asio::co_spawn(lane.ioc, ClosedLoopWorker(lane, plan, phase), [](std::exception_ptr) {});
    }
  } else {
    for (int64_t k = 0; k < n; ++k) {
      Lane& lane = *lanes[static_cast<size_t>(k)];
      asio::co_spawn(lane.ioc, OpenLoopDispatcher(lane, plan, phase, k, n),
                     [](std::exception_ptr) {});
    }
  }
  std::vector<std::thread> threads;
  for (auto& lane : lanes) threads.emplace_back([&ioc = lane->ioc] { ioc.run(); });
  for (std::thread& t : threads) t.join();
}

// GET <prefix>/v1/models → the first model's id.
awaitable<void> LookupModel(Lane& lane, const Plan& plan, const std::string& prefix,
                            absl::StatusOr<std::string>* out) {
  const ServeBenchOptions& o = *plan.options;
  const std::string where = absl::StrCat("GET ", o.url, "/v1/models");
  beast::tcp_stream stream(lane.ioc);
  beast::error_code ec;
  stream.expires_after(
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s)));
  co_await stream.async_connect(plan.endpoints, asio::redirect_error(use_awaitable, ec));
  http::request<http::empty_body> request{http::verb::get, absl::StrCat(prefix, "/v1/models"), 11};
  request.set(http::field::host, plan.host);
  if (!plan.authorization.empty()) request.set(http::field::authorization, plan.authorization);
  request.keep_alive(false);
  if (!ec) co_await http::async_write(stream, request, asio::redirect_error(use_awaitable, ec));
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(1 << 20);
  if (!ec)
    co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    *out = absl::UnavailableError(absl::StrCat(where, ": ", Describe("request", ec, o.timeout_s),
                                               " (is the router running? or pass --model)"));
    co_return;
  }
  const std::string& body = parser.get().body();
  if (parser.get().result_int() != 200) {
    *out = absl::UnavailableError(absl::StrCat(where, ": HTTP ", parser.get().result_int(), ": ",
                                               ErrorMessage(lane.json, body)));
    co_return;
  }
  std::string_view id;
  simdjson::dom::element doc;
  if (lane.json.parse(body).get(doc) != simdjson::SUCCESS ||
      doc.at_pointer("/data/0/id").get(id) != simdjson::SUCCESS) {
    *out = absl::UnavailableError(absl::StrCat(where, ": no model listed; pass --model"));
    co_return;
  }
  *out = std::string(id);
}

std::string DefaultLabel(const ServeBenchOptions& o) {
  std::string label =
      absl::StrCat("serve_", o.endpoint, "_in", o.prompt_tokens, "_out", o.output_tokens);
  if (o.background_prompt_tokens > 0) absl::StrAppend(&label, "_bg", o.background_prompt_tokens);
  if (o.request_rate > 0) return absl::StrCat(label, "_r", o.request_rate);
  return absl::StrCat(label, "_c", o.concurrency);
}

ServeBenchResult Aggregate(const ServeBenchOptions& options, std::vector<RequestRecord> records) {
  ServeBenchResult r;
  r.options = options;
  r.label = options.label.empty() ? DefaultLabel(options) : options.label;
  std::vector<double> ttft, tpot, itl, e2e;
  double end = 0;
  absl::flat_hash_map<std::string, size_t> error_index;
  for (const RequestRecord& q : records) {
    end = std::max(end, q.start_s + q.e2e_s);
    if (!q.ok) {
      ++r.failed;
      auto [it, added] = error_index.try_emplace(q.error, r.errors.size());
      if (added) r.errors.emplace_back(q.error, 0);
      ++r.errors[it->second].second;
      continue;
    }
    ++r.completed;
    r.input_tokens += q.prompt_tokens;
    r.output_tokens += q.completion_tokens;
    r.cached_tokens += q.cached_tokens;
    ttft.push_back(q.ttft_s);
    e2e.push_back(q.e2e_s);
    if (q.completion_tokens > 1) {
      tpot.push_back((q.e2e_s - q.ttft_s) / static_cast<double>(q.completion_tokens - 1));
    }
    itl.insert(itl.end(), q.itl_s.begin(), q.itl_s.end());
  }
  r.duration_s = end;
  if (end > 0) {
    r.request_throughput = static_cast<double>(r.completed) / end;
    r.output_throughput = static_cast<double>(r.output_tokens) / end;
    r.total_throughput = static_cast<double>(r.input_tokens + r.output_tokens) / end;
  }
  r.ttft_s = Summarize(std::move(ttft));
  r.tpot_s = Summarize(std::move(tpot));
  r.itl_s = Summarize(std::move(itl));
  r.e2e_s = Summarize(std::move(e2e));
  r.requests = std::move(records);
  return r;
}

}  // namespace

void SseParser::Feed(std::string_view bytes,
                     const std::function<void(std::string_view data)>& on_data) {
  pending_.append(bytes);
  size_t begin = 0;
  for (size_t end; (end = pending_.find('\n', begin)) != std::string::npos; begin = end + 1) {
    std::string_view line(pending_.data() + begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    Line(line, on_data);
  }
  pending_.erase(0, begin);
}

void SseParser::Line(std::string_view line,
                     const std::function<void(std::string_view data)>& on_data) {
  if (line.empty()) {  // the blank line that ends an event
    if (has_data_) on_data(data_);
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line.front() == ':') return;  // a comment (servers send these as keep-alives)
  const size_t colon = line.find(':');
  const std::string_view field = line.substr(0, colon);
  std::string_view value =
      colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (field != "data") return;
  if (has_data_) data_ += '\n';
  data_.append(value);
  has_data_ = true;
}

Distribution Summarize(std::vector<double> values) {
  Distribution d;
  if (values.empty()) return d;
  std::sort(values.begin(), values.end());
  auto at = [&](double q) {
    const double pos = q * static_cast<double>(values.size() - 1);
    const size_t lo = static_cast<size_t>(pos);
    const size_t hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (values[hi] - values[lo]) * (pos - static_cast<double>(lo));
  };
  d.count = static_cast<int64_t>(values.size());
  double sum = 0;
  for (const double v : values) sum += v;
  d.mean = sum / static_cast<double>(values.size());
  d.min = values.front();
  d.max = values.back();
  d.p50 = at(0.5);
  d.p90 = at(0.9);
  d.p99 = at(0.99);
  return d;
}

absl::StatusOr<ServeBenchResult> RunServeBench(const ServeBenchOptions& options) {
  if (absl::Status status = Validate(options); !status.ok()) return status;
  absl::StatusOr<Target> target = ParseUrl(options.url);
  if (!target.ok()) return target.status();

  Plan plan;
  plan.options = &options;
  plan.host = target->port == "80" ? target->host : absl::StrCat(target->host, ":", target->port);
  plan.path = absl::StrCat(target->prefix,
                           options.endpoint == "chat" ? "/v1/chat/completions" : "/v1/completions");
  if (!options.api_key.empty()) plan.authorization = absl::StrCat("Bearer ", options.api_key);
  std::vector<std::unique_ptr<Lane>> lanes;
  for (int i = 0; i < options.io_threads; ++i) lanes.push_back(std::make_unique<Lane>());
  {
    tcp::resolver resolver(lanes[0]->ioc);
    beast::error_code ec;
    plan.endpoints = resolver.resolve(target->host, target->port, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat("--url ", options.url, ": cannot resolve ",
                                                 target->host, ": ", ec.message()));
    }
  }

  plan.model = options.model;
  if (plan.model.empty()) {
    absl::StatusOr<std::string> model = absl::UnknownError("model lookup did not run");
    lanes[0]->ioc.restart();
    asio::co_spawn(lanes[0]->ioc, LookupModel(*lanes[0], plan, target->prefix, &model),
                   [](std::exception_ptr) {});
    lanes[0]->ioc.run();
    if (!model.ok()) return model.status();
    plan.model = *model;
  }

  if (options.warmup > 0) {
    Phase warmup;
    warmup.count = options.warmup;
    warmup.first_prompt = options.num_requests;
    warmup.concurrency = std::max<int64_t>(1, options.request_rate > 0 ? 1 : options.concurrency);
    RunPhase(lanes, plan, warmup);
    const auto ok = std::find_if(warmup.records.begin(), warmup.records.end(),
                                 [](const RequestRecord& r) { return r.ok; });
    if (ok == warmup.records.end()) {
      return absl::UnavailableError(absl::StrCat("every warm-up request to ", options.url,
                                                 plan.path,
                                                 " failed; the first: ", warmup.records[0].error));
    }
  }

  // The long prompt in the background, on a lane of its own, cut off after the measured run.
  ServeBenchOptions background_options = options;
  background_options.prompt_tokens = options.background_prompt_tokens;
  background_options.output_tokens = 1;
  Plan background_plan = plan;
  background_plan.options = &background_options;
  Phase background;
  std::vector<std::unique_ptr<Lane>> background_lanes;
  std::thread background_thread;
  if (options.background_prompt_tokens > 0) {
    background_lanes.push_back(std::make_unique<Lane>());
    background.count = 1;
    background.first_prompt = options.num_requests + options.warmup;
    background_thread = std::thread([&] { RunPhase(background_lanes, background_plan, background); });
    std::this_thread::sleep_for(std::chrono::duration<double>(options.background_lead_s));
  }

  Phase run;
  run.count = options.num_requests;
  run.concurrency = options.concurrency;
  if (options.request_rate > 0) {
    std::mt19937_64 rng(Mix(options.seed, ~uint64_t{0}));
    std::exponential_distribution<double> gap(options.request_rate);
    double t = 0;
    for (int64_t i = 0; i < run.count; ++i) {
      run.arrivals.push_back(t);
      t += gap(rng);
    }
  }
  RunPhase(lanes, plan, run);
  if (background_thread.joinable()) {
    background_lanes[0]->ioc.stop();  // its connection closes: the server cancels it
    background_thread.join();
    if (background.records[0].ok) {
      std::fprintf(stderr,
                   "bench serve: the background request completed during the run (e2e %.1f s): the "
                   "later measured requests ran without it\n",
                   background.records[0].e2e_s);
    }
  }
  ServeBenchResult result = Aggregate(options, std::move(run.records));
  result.model = plan.model;
  return result;
}

void PrintServeBench(const ServeBenchResult& r) {
  const ServeBenchOptions& o = r.options;
  std::printf("=== strata bench serve: %s ===\n", r.label.c_str());
  std::printf("%-34s %s %s\n", "Target:", o.url.c_str(), o.endpoint.c_str());
  std::printf("%-34s %s\n", "Model:", r.model.c_str());
  if (o.request_rate > 0) {
    std::printf("%-34s %.4g req/s (Poisson, seed %llu)\n", "Request rate:", o.request_rate,
                static_cast<unsigned long long>(o.seed));
  } else {
    std::printf("%-34s %lld\n", "Concurrency:", static_cast<long long>(o.concurrency));
  }
  std::printf("%-34s %lld in (%s), %lld out\n",
              "Tokens per request:", static_cast<long long>(o.prompt_tokens),
              o.endpoint == "chat" || o.text_prompt ? "words" : "ids",
              static_cast<long long>(o.output_tokens));
  std::printf("%-34s %lld\n", "Successful requests:", static_cast<long long>(r.completed));
  std::printf("%-34s %lld\n", "Failed requests:", static_cast<long long>(r.failed));
  std::printf("%-34s %.3f\n", "Benchmark duration (s):", r.duration_s);
  std::printf("%-34s %lld\n", "Total input tokens:", static_cast<long long>(r.input_tokens));
  std::printf("%-34s %lld\n", "Cached input tokens:", static_cast<long long>(r.cached_tokens));
  std::printf("%-34s %lld\n", "Total generated tokens:", static_cast<long long>(r.output_tokens));
  std::printf("%-34s %.3f\n", "Request throughput (req/s):", r.request_throughput);
  std::printf("%-34s %.2f\n", "Output token throughput (tok/s):", r.output_throughput);
  std::printf("%-34s %.2f\n", "Total token throughput (tok/s):", r.total_throughput);
  std::printf("%-10s %10s %10s %10s %10s %10s %10s\n", "(ms)", "mean", "p50", "p90", "p99", "max",
              "samples");
  auto row = [](const char* name, const Distribution& d) {
    std::printf("%-10s %10.2f %10.2f %10.2f %10.2f %10.2f %10lld\n", name, d.mean * 1e3,
                d.p50 * 1e3, d.p90 * 1e3, d.p99 * 1e3, d.max * 1e3,
                static_cast<long long>(d.count));
  };
  row("TTFT", r.ttft_s);
  row("TPOT", r.tpot_s);
  row("ITL", r.itl_s);
  row("E2E", r.e2e_s);
  constexpr size_t kShownErrors = 5;
  if (!r.errors.empty()) {
    std::printf("Errors (%zu distinct):\n", r.errors.size());
    for (size_t i = 0; i < std::min(kShownErrors, r.errors.size()); ++i) {
      std::printf("  %6lld x %s\n", static_cast<long long>(r.errors[i].second),
                  r.errors[i].first.c_str());
    }
    if (r.errors.size() > kShownErrors)
      std::printf("  ... and %zu more\n", r.errors.size() - kShownErrors);
  }
  std::fflush(stdout);
}

std::vector<Figure> ServeBenchFigures(const ServeBenchResult& r) {
  std::vector<Figure> figures;
  auto latency = [&](const char* what, const Distribution& d) {
    if (d.count == 0) return;
    const double limit = std::string_view(what) == "ttft" ? r.options.ttft_limit_ms : 0;
    figures.push_back({absl::StrCat(r.label, "_", what, "_p50"), d.p50 * 1e3, "ms", limit, false});
    figures.push_back({absl::StrCat(r.label, "_", what, "_p99"), d.p99 * 1e3, "ms", limit, false});
  };
  latency("ttft", r.ttft_s);
  latency("tpot", r.tpot_s);
  latency("itl", r.itl_s);
  if (r.completed > 0) {
    figures.push_back(
        {absl::StrCat(r.label, "_req_per_s"), r.request_throughput, "req/s", 0, true});
    figures.push_back(
        {absl::StrCat(r.label, "_output_tok_per_s"), r.output_throughput, "tok/s", 0, true});
    figures.push_back(
        {absl::StrCat(r.label, "_total_tok_per_s"), r.total_throughput, "tok/s", 0, true});
  }
  figures.push_back(
      {absl::StrCat(r.label, "_failed"), static_cast<double>(r.failed), "requests", 0, false});
  return figures;
}

void ReportServeBench(const ServeBenchResult& result, const std::string& results_file) {
  for (const Figure& figure : ServeBenchFigures(result)) Report(figure, results_file);
}

}  // namespace strata::bench
