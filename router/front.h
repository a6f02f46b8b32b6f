// The router's OpenAI-compatible HTTP front: POST /v1/completions, POST /v1/chat/completions
// (streamed as server-sent events or not), GET /v1/models, plus /metrics and /healthz. It
// authenticates the API key (tenant), validates the request, applies the chat template and
// tokenizes, checks the context length and the in-flight limit, and hands the tokens to a
// router::Upstream; generated ids come back as events and go out as text, with stop sequences
// applied here so they never leak into the stream.
//
//   OpenAiFront front({.http = {.address = "0.0.0.0", .port = 8000}, .served_model = "strata",
//                      .api_keys = {{"sk-…", "tenant-a"}}},
//                     *tokenizer, upstream, registry);
//   STRATA_RETURN_IF_ERROR(front.Start());
//   ... on SIGTERM: front.Stop(absl::Seconds(30));
//
// Status codes: 400 bad request (OpenAI's error shape, `param` names the field; prompt plus
// max_tokens over the context: code context_length_exceeded), 401 missing or wrong key, 404
// unknown model or route, 413 body over the HTTP limit or prompt alone longer than the context,
// 429 upstream ResourceExhausted (quota / rate limit), 503 over max_in_flight or upstream
// Unavailable, 500 anything else. An upstream error after a stream has started is sent as an SSE
// event `data: {"error":…}` followed by `data: [DONE]`.
//
// Threading: Start, Stop and port from any thread (not concurrently, not from an io thread).
// Requests are served on the HTTP server's io threads; tokenization runs on a small pool of its
// own so long prompts do not stall the io threads; upstream events are handled on the
// upstream's threads. The tokenizer, the upstream and the registry must outlive the front.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/logging.h"
#include "common/http_server.h"
#include "common/thread_pool.h"
#include "engine/tokenizer.h"
#include "prometheus/registry.h"
#include "router/auth.h"
#include "router/openai.h"
#include "router/upstream.h"

namespace strata::router {

struct OpenAiFrontOptions {
  HttpServerOptions http;               // listen address and port (0: any), io threads, limits
  std::string served_model = "strata";  // the model name requests must name; listed by /v1/models
  int64_t max_context_tokens = 65536;   // prompt + max_tokens must fit in it
  int64_t default_max_tokens = 1024;    // when the request sets none (capped by the room left)
  int64_t max_in_flight = 256;          // generation requests admitted at once; more get 503
  std::vector<ApiKey> api_keys;         // empty: no authentication, tenant "default"
  int tokenizer_threads = 2;
};

class OpenAiFront {
 public:
  OpenAiFront(OpenAiFrontOptions options, const engine::Tokenizer& tokenizer, Upstream& upstream,
              std::shared_ptr<prometheus::Registry> registry, Clock& clock = Clock::Real());
  ~OpenAiFront();  // Stop(absl::ZeroDuration()) if running
  OpenAiFront(const OpenAiFront&) = delete;
  OpenAiFront& operator=(const OpenAiFront&) = delete;

  // Listens. Errors: the address is taken or invalid.
  absl::Status Start();
  uint16_t port() const { return server_.port(); }

  // Stops accepting, lets requests in progress finish until `grace` has passed, cancels the
  // rest upstream, and returns once every upstream call has delivered its final event.
  void Stop(absl::Duration grace);

 private:
  class Request;
  struct Metrics;

  void Handle(HttpRequest request, std::shared_ptr<HttpExchange> exchange);
  void HandleGenerate(Endpoint endpoint, const HttpRequest& http,
                      std::shared_ptr<HttpExchange> exchange, std::string tenant);
  void Reply(HttpExchange& exchange, absl::string_view route, const ApiError& error,
             HttpHeaders headers = {});
  void ReplyOk(HttpExchange& exchange, absl::string_view route, std::string content_type,
               std::string body);
  void CountResponse(absl::string_view route, int status);
  // Runs on the tokenizer pool: tokenize, check lengths, start the upstream call.
  void Prepare(std::shared_ptr<Request> request);
  // Called once per admitted request when its outcome is known (any thread).
  void ReleaseSlot();
  // Called once per admitted request as the last thing it does (any thread).
  void Retire(std::shared_ptr<UpstreamCall> call);
  // Keeps a finished call until ReapFinishedCalls (any thread).
  void Bury(std::shared_ptr<UpstreamCall> call);
  // Destroys upstream calls whose final event has come (never on the upstream's own thread).
  void ReapFinishedCalls();
  std::string NextId(Endpoint endpoint);
  int64_t Now() { return absl::ToUnixSeconds(clock_.Now()); }

  const OpenAiFrontOptions options_;
  const engine::Tokenizer& tokenizer_;
  Upstream& upstream_;
  const std::shared_ptr<prometheus::Registry> registry_;
  Clock& clock_;
  const ApiKeys keys_;
  const std::unique_ptr<Metrics> metrics_;
  const uint64_t id_prefix_;
  LogRateLimiter server_error_log_;  // 5xx outcomes
  std::atomic<uint64_t> next_id_{0};
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  bool stopped_ = false;

  absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // admitted, outcome not yet known (the limit)
  int64_t live_ ABSL_GUARDED_BY(mu_) = 0;       // admitted, not yet retired (Stop waits)
  std::vector<std::shared_ptr<UpstreamCall>> finished_calls_ ABSL_GUARDED_BY(mu_);

  ThreadPool tokenizer_pool_;
  HttpServer server_;  // last: stopped and destroyed first
};

}  // namespace strata::router
