#include "router/front.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/strings.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/text_serializer.h"
#include "router/generation.h"
#include "spdlog/spdlog.h"

namespace strata::router {
namespace {

constexpr absl::string_view kCompletionsRoute = "/v1/completions";
constexpr absl::string_view kChatRoute = "/v1/chat/completions";
constexpr absl::string_view kModelsRoute = "/v1/models";
constexpr absl::string_view kModelRoute = "/v1/models/{model}";
constexpr absl::string_view kJson = "application/json";
// nginx's "client closed request": the label requests the client gave up on are counted under.
constexpr int kClientClosed = 499;

absl::string_view RouteOf(Endpoint endpoint) {
  return endpoint == Endpoint::kChatCompletions ? kChatRoute : kCompletionsRoute;
}

int64_t Millis(absl::Duration d) { return absl::ToInt64Milliseconds(d); }

}  // namespace

// ---- metrics -------------------------------------------------------------------------------

struct OpenAiFront::Metrics {
  explicit Metrics(prometheus::Registry& registry)
      : requests(prometheus::BuildCounter()
                     .Name("strata_router_requests_total")
                     .Help("HTTP requests answered, by route and status (499: client went away)")
                     .Register(registry)),
        in_flight(prometheus::BuildGauge()
                      .Name("strata_router_in_flight_requests")
                      .Help("Generation requests admitted and not finished")
                      .Register(registry)
                      .Add({})),
        ttft(prometheus::BuildHistogram()
                 .Name("strata_router_time_to_first_token_seconds")
                 .Help("From the request's arrival to the first generated token")
                 .Register(registry)),
        duration(prometheus::BuildHistogram()
                     .Name("strata_router_request_duration_seconds")
                     .Help("From the request's arrival to the end of its response")
                     .Register(registry)),
        prompt_tokens(prometheus::BuildCounter()
                          .Name("strata_router_prompt_tokens_total")
                          .Help("Prompt tokens of finished generation requests")
                          .Register(registry)),
        cached_tokens(prometheus::BuildCounter()
                          .Name("strata_router_cached_prompt_tokens_total")
                          .Help("Prompt tokens served from the prefix cache")
                          .Register(registry)),
        completion_tokens(prometheus::BuildCounter()
                              .Name("strata_router_completion_tokens_total")
                              .Help("Generated tokens")
                              .Register(registry)) {}

  static const prometheus::Histogram::BucketBoundaries& TtftBuckets() {
    static const auto* b = new prometheus::Histogram::BucketBoundaries{
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
    return *b;
  }
  static const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
    static const auto* b = new prometheus::Histogram::BucketBoundaries{
        0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};
    return *b;
  }

  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Gauge& in_flight;
  prometheus::Family<prometheus::Histogram>& ttft;
  prometheus::Family<prometheus::Histogram>& duration;
  prometheus::Family<prometheus::Counter>& prompt_tokens;
  prometheus::Family<prometheus::Counter>& cached_tokens;
  prometheus::Family<prometheus::Counter>& completion_tokens;
};

// ---- one generation request ------------------------------------------------------------------

// Lives from admission until its final upstream event (held by the tokenizer task, then by the
// upstream's callback). Threads: constructed on an io thread; Prepare fills `prompt` and
// `max_tokens` on the tokenizer pool before the upstream call starts; OnEvent runs on the
// upstream's thread (one event at a time); Cancel from anywhere.
class OpenAiFront::Request {
 public:
  Request(OpenAiFront& front, ApiRequest api, std::shared_ptr<HttpExchange> exchange,
          std::string tenant, std::string traceparent, ResponseMeta meta, absl::Time start)
      : front_(front),
        api_(std::move(api)),
        exchange_(std::move(exchange)),
        tenant_(std::move(tenant)),
        traceparent_(std::move(traceparent)),
        meta_(std::move(meta)),
        start_(start),
        completion_(front.tokenizer_, api_.stop, api_.ignore_eos) {}

  const ApiRequest& api() const { return api_; }
  const ResponseMeta& meta() const { return meta_; }
  const std::string& tenant() const { return tenant_; }
  const std::string& traceparent() const { return traceparent_; }
  HttpExchange& exchange() { return *exchange_; }
  absl::string_view route() const { return RouteOf(meta_.endpoint); }

  void SetPrompt(int64_t prompt_tokens, int64_t max_tokens) {
    prompt_tokens_ = prompt_tokens;
    completion_.set_max_tokens(max_tokens);
  }

  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return cancel_requested_;
  }

  void Cancel() {
    std::shared_ptr<UpstreamCall> call;
    {
      absl::MutexLock lock(&mu_);
      if (cancel_requested_) return;
      cancel_requested_ = true;
      call = call_;
    }
    if (call != nullptr) call->Cancel();
  }

  // After Upstream::Start returned (the final event may already have come).
  void AttachCall(std::unique_ptr<UpstreamCall> started) {
    std::shared_ptr<UpstreamCall> call(std::move(started));
    if (call == nullptr) {  // an upstream bug; do not leave the client hanging
      return Fail({.http_status = 500, .message = "the upstream did not start the request"});
    }
    bool finished = false;
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      finished = done_;
      if (!finished) {
        call_ = call;
        cancel = cancel_requested_;
      }
    }
    // Its final event has been handled: the front destroys it later, off the upstream's thread.
    if (finished) return front_.Bury(std::move(call));
    if (cancel) call->Cancel();
  }

  // A failure before the upstream call started (or instead of it).
  void Fail(const ApiError& error) {
    Account(error.http_status, error.message);
    Respond(error);
    Retire();
  }

  void OnEvent(UpstreamEvent event) {
    if (!completed_.load()) Process(event);
    if (event.done) Retire();
  }

 private:
  void Process(UpstreamEvent& event) {
    const engine::Tokenizer& tokenizer = front_.tokenizer_;
    if (!event.tokens.empty() && !saw_token_) {
      saw_token_ = true;
      ttft_ = front_.clock_.Now() - start_;
      front_.metrics_->ttft.Add({{"route", std::string(route())}}, Metrics::TtftBuckets())
          .Observe(absl::ToDoubleSeconds(ttft_));
    }
    std::string text;
    for (size_t i = 0; i < event.tokens.size() && completion_.finish() == FinishReason::kNone;
         ++i) {
      const int32_t token = event.tokens[i];
      if (api_.logprobs) {
        absl::StatusOr<std::string> piece = tokenizer.Decode(absl::MakeConstSpan(&token, 1));
        pending_logprobs_.push_back(TokenLogprob{
            .token = completion_.Hidden(token) || !piece.ok() ? std::string() : *std::move(piece),
            .logprob = i < event.logprobs.size() ? event.logprobs[i] : 0.0f,
            .text_offset = emitted_bytes_ + static_cast<int64_t>(text.size())});
      }
      text += completion_.Push(token);
    }
    // The answer is complete (max_tokens, EOS, a stop sequence): what the decoder held back (a
    // partial character) goes out with this token's text, not later in a chunk of its own.
    if (completion_.finish() != FinishReason::kNone && !event.done) text += completion_.Finish(completion_.finish());
    // EOS or a stop sequence came here: the upstream need not go on (its final event follows).
    if (completion_.finish() == FinishReason::kStop && !event.done) Cancel();
    if (!event.done) {
      if (event.tokens.empty()) return KeepAlive();
      Emit(std::move(text));
      return;
    }

    cached_tokens_ = event.cached_tokens;
    if (completion_.finish() == FinishReason::kNone && !event.status.ok()) {
      if (exchange_->disconnected()) return Account(kClientClosed, "client went away");
      return FailUpstream(event.status);
    }
    text += completion_.Finish(event.finish);
    if (exchange_->disconnected()) return Account(kClientClosed, "client went away");
    Finish(std::move(text));
  }

  void Respond(const ApiError& error) {
    HttpHeaders headers = {{"X-Request-Id", meta_.id}};
    if (error.http_status == 503 || error.http_status == 429)
      headers.emplace_back("Retry-After", "1");
    exchange_->Respond({.status = error.http_status,
                        .content_type = std::string(kJson),
                        .headers = std::move(headers),
                        .body = ErrorJson(error)});
  }

  void StartStream() {
    if (stream_started_) return;
    stream_started_ = true;
    exchange_->StartStream(200, "text/event-stream",
                           {{"Cache-Control", "no-cache"}, {"X-Request-Id", meta_.id}});
    if (meta_.endpoint == Endpoint::kChatCompletions) {
      Write(StreamChunkJson(meta_, "", /*role_chunk=*/true, FinishReason::kNone, nullptr,
                            api_.include_usage));
    }
  }

  void Write(absl::string_view json) {
    if (!exchange_->Write(SseEvent(json))) Cancel();  // the client is gone
  }

  // The upstream is busy with the request and has nothing yet (queued, prefilling, moving to
  // another worker): a streaming client gets an SSE comment, so it and the proxies between can
  // tell a long wait from a dead connection.
  void KeepAlive() {
    if (!api_.stream) return;
    StartStream();
    if (!exchange_->Write(std::string(kSseKeepAlive))) Cancel();
  }

  // Text generated by a non-final event.
  void Emit(std::string text) {
    if (text.empty()) return;  // logprobs of held-back tokens ride with the next text
    emitted_bytes_ += static_cast<int64_t>(text.size());
    if (!api_.stream) {
      text_ += text;
      return;
    }
    StartStream();
    Write(StreamChunkJson(meta_, text, false, FinishReason::kNone,
                          api_.logprobs ? &pending_logprobs_ : nullptr, api_.include_usage));
    pending_logprobs_.clear();
  }

  void Finish(std::string text) {
    const Usage usage{.prompt_tokens = prompt_tokens_,
                      .completion_tokens = completion_.tokens(),
                      .cached_tokens = cached_tokens_};
    // Accounted first: the slot is free by the time the client sees the end.
    Account(200, "");
    if (!api_.stream) {
      text_ += text;
      exchange_->Respond({.status = 200,
                          .content_type = std::string(kJson),
                          .headers = {{"X-Request-Id", meta_.id}},
                          .body = CompletionJson(meta_, text_, completion_.finish(), usage,
                                                 api_.logprobs ? &pending_logprobs_ : nullptr)});
      return;
    }
    StartStream();
    if (!text.empty() || !pending_logprobs_.empty()) {
      Write(StreamChunkJson(meta_, text, false, FinishReason::kNone,
                            api_.logprobs ? &pending_logprobs_ : nullptr, api_.include_usage));
    }
    Write(StreamChunkJson(meta_, "", false, completion_.finish(), nullptr, api_.include_usage));
    if (api_.include_usage) Write(UsageChunkJson(meta_, usage));
    exchange_->Write(std::string(kSseDone));
    exchange_->Finish();
  }

  void FailUpstream(const absl::Status& status) {
    const ApiError error = ApiErrorFromStatus(status);
    Account(error.http_status, error.message);
    if (!stream_started_) {
      Respond(error);
    } else {
      // Headers (200) are out: the error goes in the stream, which then ends as usual.
      Write(ErrorJson(error));
      exchange_->Write(std::string(kSseDone));
      exchange_->Finish();
    }
  }

  // Counts and logs the request's outcome, once, and frees its in-flight slot.
  void Account(int status, absl::string_view error) {
    if (completed_.exchange(true)) return;
    const absl::Duration elapsed = front_.clock_.Now() - start_;
    Metrics& m = *front_.metrics_;
    const std::string route_label(route());
    front_.CountResponse(route(), status);
    m.duration.Add({{"route", route_label}}, Metrics::DurationBuckets())
        .Observe(absl::ToDoubleSeconds(elapsed));
    m.prompt_tokens.Add({{"route", route_label}}).Increment(static_cast<double>(prompt_tokens_));
    m.cached_tokens.Add({{"route", route_label}}).Increment(static_cast<double>(cached_tokens_));
    m.completion_tokens.Add({{"route", route_label}})
        .Increment(static_cast<double>(completion_.tokens()));
    const char* finish = FinishReasonName(completion_.finish());
    if (status == 200 || status == kClientClosed) {
      spdlog::info(
          "{} {} tenant={} status={} prompt_tokens={} cached_tokens={} completion_tokens={} "
          "finish={} ttft_ms={} total_ms={}",
          meta_.id, ToStd(route()), tenant_, status, prompt_tokens_, cached_tokens_,
          completion_.tokens(), finish == nullptr ? "none" : finish,
          saw_token_ ? Millis(ttft_) : -1, Millis(elapsed));
    } else {
      // Client errors are routine (info); server-side failures are worth a look (warning), but
      // an outage must not flood the log: at most a few lines a second, then a count.
      if (status < 500) {
        spdlog::info("{} {} tenant={} status={} prompt_tokens={} completion_tokens={} total_ms={}: {}",
                     meta_.id, ToStd(route()), tenant_, status, prompt_tokens_, completion_.tokens(),
                     Millis(elapsed), ToStd(error));
      } else if (int64_t suppressed = 0; front_.server_error_log_.Allow(front_.clock_.Now(), &suppressed)) {
        spdlog::warn("{} {} tenant={} status={} prompt_tokens={} completion_tokens={} total_ms={}: {}{}",
                     meta_.id, ToStd(route()), tenant_, status, prompt_tokens_, completion_.tokens(),
                     Millis(elapsed), ToStd(error),
                     suppressed > 0 ? absl::StrCat(" (", suppressed, " more server errors not logged)") : "");
      }
    }
    front_.ReleaseSlot();
  }

  // The last thing done for a request (after its final event was handled): hands the upstream
  // call to the front for destruction. The request touches nothing of the front after this.
  void Retire() {
    if (retired_.exchange(true)) return;
    std::shared_ptr<UpstreamCall> call;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      call = std::move(call_);
    }
    front_.Retire(std::move(call));
  }

  OpenAiFront& front_;
  const ApiRequest api_;
  const std::shared_ptr<HttpExchange> exchange_;
  const std::string tenant_;
  const std::string traceparent_;
  const ResponseMeta meta_;
  const absl::Time start_;

  // Set by Prepare before the upstream call starts.
  int64_t prompt_tokens_ = 0;

  // The generation, touched only by the thread delivering events (its max_tokens set by
  // Prepare before the upstream call starts).
  CompletionText completion_;
  bool saw_token_ = false;
  bool stream_started_ = false;
  absl::Duration ttft_;
  int64_t cached_tokens_ = 0;
  int64_t emitted_bytes_ = 0;
  std::string text_;  // the whole completion, when not streaming
  std::vector<TokenLogprob> pending_logprobs_;
  std::atomic<bool> completed_{false};  // accounted
  std::atomic<bool> retired_{false};

  absl::Mutex mu_;
  std::shared_ptr<UpstreamCall> call_ ABSL_GUARDED_BY(mu_);
  bool cancel_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// ---- the front -------------------------------------------------------------------------------

OpenAiFront::OpenAiFront(OpenAiFrontOptions options, const engine::Tokenizer& tokenizer,
                         Upstream& upstream, std::shared_ptr<prometheus::Registry> registry,
                         Clock& clock)
    : options_(std::move(options)),
      tokenizer_(tokenizer),
      upstream_(upstream),
      registry_(std::move(registry)),
      clock_(clock),
      keys_(options_.api_keys),
      metrics_(std::make_unique<Metrics>(*registry_)),
      id_prefix_(absl::Uniform<uint64_t>(absl::BitGen())),
      // Admission bounds what is queued here to max_in_flight, so Schedule never blocks.
      tokenizer_pool_(static_cast<size_t>(std::max(1, options_.tokenizer_threads)),
                      static_cast<size_t>(std::max<int64_t>(1, options_.max_in_flight))),
      server_(options_.http, [this](HttpRequest request, std::shared_ptr<HttpExchange> exchange) {
        Handle(std::move(request), std::move(exchange));
      }) {}

OpenAiFront::~OpenAiFront() { Stop(absl::ZeroDuration()); }

absl::Status OpenAiFront::Start() {
  STRATA_RETURN_IF_ERROR(server_.Start());
  started_ = true;
  spdlog::info("router: OpenAI API on {}:{} serving model '{}' (context {} tokens, {})",
               options_.http.address, server_.port(), options_.served_model,
               options_.max_context_tokens,
               keys_.enabled() ? "API keys required" : "no authentication");
  return absl::OkStatus();
}

void OpenAiFront::Stop(absl::Duration grace) {
  if (!started_ || stopped_) return;
  stopped_ = true;
  stopping_.store(true);
  server_.Stop(grace);  // cuts what is still running at the deadline: those calls get cancelled
  std::vector<std::shared_ptr<UpstreamCall>> calls;
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ == 0; };
    // The upstream promises a final event soon after Cancel; wait for every one, since the
    // events use this object.
    while (!mu_.AwaitWithTimeout(absl::Condition(&idle), absl::Seconds(5))) {
      spdlog::warn("router: stopping; waiting for {} upstream calls to finish", live_);
    }
    calls.swap(finished_calls_);
  }
}

void OpenAiFront::ReleaseSlot() {
  metrics_->in_flight.Decrement();
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

void OpenAiFront::Retire(std::shared_ptr<UpstreamCall> call) {
  absl::MutexLock lock(&mu_);
  --live_;
  if (call != nullptr) finished_calls_.push_back(std::move(call));
}

void OpenAiFront::Bury(std::shared_ptr<UpstreamCall> call) {
  absl::MutexLock lock(&mu_);
  finished_calls_.push_back(std::move(call));
}

void OpenAiFront::ReapFinishedCalls() {
  std::vector<std::shared_ptr<UpstreamCall>> calls;
  {
    absl::MutexLock lock(&mu_);
    if (finished_calls_.empty()) return;
    calls.swap(finished_calls_);
  }
  // Destroyed here, on an io thread, never inside the upstream's own callback.
}

std::string OpenAiFront::NextId(Endpoint endpoint) {
  return absl::StrFormat("%s-%016x%08x",
                         endpoint == Endpoint::kChatCompletions ? "chatcmpl" : "cmpl", id_prefix_,
                         next_id_.fetch_add(1) & 0xffffffff);
}

void OpenAiFront::CountResponse(absl::string_view route, int status) {
  metrics_->requests.Add({{"route", std::string(route)}, {"status", absl::StrCat(status)}})
      .Increment();
}

void OpenAiFront::Reply(HttpExchange& exchange, absl::string_view route, const ApiError& error,
                        HttpHeaders headers) {
  CountResponse(route, error.http_status);
  exchange.Respond({.status = error.http_status,
                    .content_type = std::string(kJson),
                    .headers = std::move(headers),
                    .body = ErrorJson(error)});
}

void OpenAiFront::ReplyOk(HttpExchange& exchange, absl::string_view route, std::string content_type,
                          std::string body) {
  CountResponse(route, 200);
  exchange.Respond(
      {.status = 200, .content_type = std::move(content_type), .body = std::move(body)});
}

void OpenAiFront::Handle(HttpRequest request, std::shared_ptr<HttpExchange> exchange) {
  ReapFinishedCalls();
  const std::string& path = request.path;
  const bool get = request.method == "GET";
  auto method_not_allowed = [&](absl::string_view route, absl::string_view allowed) {
    Reply(*exchange, route,
          {.http_status = 405,
           .message = absl::StrCat("Method ", request.method, " is not allowed on ", path, "; use ",
                                   allowed)},
          {{"Allow", std::string(allowed)}});
  };

  // Unauthenticated: probes and scrapes. /livez: the process serves HTTP (liveness). /healthz:
  // requests can be served (readiness): 503 while the upstream cannot take them, e.g. no decode
  // worker is live, so a load balancer sends clients elsewhere.
  if (path == "/livez") {
    if (!get) return method_not_allowed("/livez", "GET");
    return ReplyOk(*exchange, "/livez", "text/plain; charset=utf-8", "ok\n");
  }
  if (path == "/healthz") {
    if (!get) return method_not_allowed("/healthz", "GET");
    absl::Status ready = upstream_.Ready();
    if (ready.ok()) return ReplyOk(*exchange, "/healthz", "text/plain; charset=utf-8", "ok\n");
    CountResponse("/healthz", 503);
    exchange->Respond({.status = 503,
                       .content_type = "text/plain; charset=utf-8",
                       .body = absl::StrCat("not ready: ", ready.message(), "\n")});
    return;
  }
  if (path == "/metrics") {
    if (!get) return method_not_allowed("/metrics", "GET");
    // Counted before rendering, so a scrape sees itself.
    CountResponse("/metrics", 200);
    exchange->Respond({.status = 200,
                       .content_type = "text/plain; version=0.0.4; charset=utf-8",
                       .body = prometheus::TextSerializer().Serialize(registry_->Collect())});
    return;
  }

  const bool api = absl::StartsWith(path, "/v1/");
  absl::string_view route = "other";
  if (path == kCompletionsRoute || path == kChatRoute || path == kModelsRoute) {
    route = path;
  } else if (absl::StartsWith(path, "/v1/models/")) {
    route = kModelRoute;
  }
  if (!api || route == "other") {
    return Reply(*exchange, "other",
                 {.http_status = 404,
                  .message = absl::StrCat("Unknown request URL: ", request.method, " ", path,
                                          ". Please check the URL for typos.")});
  }

  absl::StatusOr<std::string> tenant = keys_.Authenticate(request.Header("Authorization"));
  if (!tenant.ok()) {
    return Reply(*exchange, route,
                 {.http_status = 401,
                  .message = std::string(tenant.status().message()),
                  .code = "invalid_api_key"},
                 {{"WWW-Authenticate", "Bearer"}});
  }

  if (route == kModelsRoute) {
    if (!get) return method_not_allowed(route, "GET");
    return ReplyOk(*exchange, route, std::string(kJson),
                   ModelListJson({options_.served_model}, Now()));
  }
  if (route == kModelRoute) {
    if (!get) return method_not_allowed(route, "GET");
    const std::string model = path.substr(std::string_view("/v1/models/").size());
    if (model != options_.served_model) {
      return Reply(*exchange, route,
                   {.http_status = 404,
                    .message = absl::StrCat("The model '", model, "' does not exist"),
                    .param = "model",
                    .code = "model_not_found"});
    }
    return ReplyOk(*exchange, route, std::string(kJson), ModelJson(model, Now()));
  }
  if (request.method != "POST") return method_not_allowed(route, "POST");
  HandleGenerate(route == kChatRoute ? Endpoint::kChatCompletions : Endpoint::kCompletions, request,
                 std::move(exchange), *std::move(tenant));
}

void OpenAiFront::HandleGenerate(Endpoint endpoint, const HttpRequest& http,
                                 std::shared_ptr<HttpExchange> exchange, std::string tenant) {
  const absl::Time start = clock_.Now();
  const absl::string_view route = RouteOf(endpoint);
  absl::StatusOr<ApiRequest> parsed = ParseApiRequest(endpoint, http.body);
  if (!parsed.ok()) {
    spdlog::info("{} tenant={} status=400: {}", ToStd(route), tenant,
                 ToStd(parsed.status().message()));
    return Reply(*exchange, route, ApiErrorFromStatus(parsed.status()));
  }
  if (parsed->model != options_.served_model) {
    return Reply(*exchange, route,
                 {.http_status = 404,
                  .message = absl::StrCat("The model '", parsed->model,
                                          "' does not exist; this server serves '",
                                          options_.served_model, "'"),
                  .param = "model",
                  .code = "model_not_found"});
  }
  bool admitted = false;
  {
    absl::MutexLock lock(&mu_);
    admitted = !stopping_.load() && in_flight_ < options_.max_in_flight;
    if (admitted) {
      ++in_flight_;
      ++live_;
    }
  }
  if (!admitted) {
    const bool stopping = stopping_.load();
    return Reply(
        *exchange, route,
        {.http_status = 503,
         .message = stopping ? std::string("The server is shutting down; retry shortly")
                             : absl::StrCat("The server is overloaded (", options_.max_in_flight,
                                            " requests in progress); retry shortly"),
         .code = stopping ? "shutting_down" : "overloaded"},
        {{"Retry-After", "1"}});
  }
  metrics_->in_flight.Increment();

  ResponseMeta meta{.endpoint = endpoint,
                    .id = NextId(endpoint),
                    .model = options_.served_model,
                    .created = absl::ToUnixSeconds(start)};
  auto request =
      std::make_shared<Request>(*this, *std::move(parsed), exchange, std::move(tenant),
                                TraceparentFor(http.Header("traceparent")), std::move(meta), start);
  spdlog::debug("{} {} tenant={} peer={} admitted", request->meta().id, ToStd(route),
                request->tenant(), http.peer);
  // A client that leaves, at any point from here on, cancels the generation.
  exchange->OnDisconnect([weak = std::weak_ptr<Request>(request)] {
    if (auto r = weak.lock()) r->Cancel();
  });
  tokenizer_pool_.Schedule(
      [this, request = std::move(request)]() mutable { Prepare(std::move(request)); });
}

void OpenAiFront::Prepare(std::shared_ptr<Request> request) {
  if (stopping_.load()) {
    return request->Fail({.http_status = 503,
                          .message = "The server is shutting down; retry shortly",
                          .code = "shutting_down"});
  }
  if (request->cancelled()) {
    return request->Fail({.http_status = kClientClosed, .message = "client went away"});
  }
  const ApiRequest& api = request->api();
  const bool chat = api.endpoint == Endpoint::kChatCompletions;
  const char* prompt_param = chat ? "messages" : "prompt";
  std::vector<int32_t> prompt;
  if (chat) {
    // Message content is only ever text: it cannot write the template's control tokens.
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer_.EncodeChat(api.messages, true);
    if (!ids.ok()) {
      return request->Fail(ApiErrorFromStatus(WithParam(ids.status(), "messages")));
    }
    prompt = *std::move(ids);
  } else if (api.prompt_ids.has_value()) {
    prompt = *api.prompt_ids;
    if (absl::Status ids = CheckTokenIds(tokenizer_, prompt, "prompt"); !ids.ok()) {
      return request->Fail(ApiErrorFromStatus(WithParam(ids, "prompt")));
    }
  } else {
    prompt = EncodePrompt(tokenizer_, api.prompt);
  }

  const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
  request->SetPrompt(prompt_tokens, 0);
  absl::StatusOr<int64_t> max_tokens =
      FitToContext(prompt_tokens, api.max_tokens, options_.default_max_tokens,
                   options_.max_context_tokens, prompt_param);
  if (!max_tokens.ok()) {
    // Prompt alone too long: 413; prompt + max_tokens over the context: 400.
    const bool too_long = absl::IsOutOfRange(max_tokens.status());
    return request->Fail(
        {.http_status = too_long ? 413 : 400,
         .message = std::string(max_tokens.status().message()),
         .param = too_long || !api.max_tokens.has_value() ? prompt_param : "max_tokens",
         .code = "context_length_exceeded"});
  }
  request->SetPrompt(prompt_tokens, *max_tokens);

  UpstreamRequest upstream{.request_id = request->meta().id,
                           .tenant = request->tenant(),
                           .traceparent = request->traceparent(),
                           .prompt = std::move(prompt),
                           .max_tokens = *max_tokens,
                           .sampling = api.sampling,
                           .ignore_eos = api.ignore_eos,
                           .logprobs = api.logprobs ? 0 : -1};
  std::unique_ptr<UpstreamCall> call = upstream_.Start(
      std::move(upstream), [request](UpstreamEvent event) { request->OnEvent(std::move(event)); });
  request->AttachCall(std::move(call));
}

}  // namespace strata::router
