#include "router/api_service.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "proto/grpc_status.h"
#include "router/generation.h"
#include "router/openai.h"
#include "spdlog/spdlog.h"

namespace strata::router {
namespace {

constexpr absl::string_view kGenerate = "Generate";
constexpr absl::string_view kListModels = "ListModels";
constexpr int64_t kMaxTopK = int64_t{1} << 31;

// What a GenerateRequest asks for, checked (no tokenization yet).
struct GenerateSpec {
  v1::GenerateRequest::InputCase input = v1::GenerateRequest::INPUT_NOT_SET;
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  std::vector<engine::ChatMessage> messages;
  std::optional<int64_t> max_tokens;
  engine::SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool logprobs = false;
};

absl::Status Invalid(absl::string_view message) { return absl::InvalidArgumentError(message); }

absl::StatusOr<GenerateSpec> Validate(const v1::GenerateRequest& r) {
  GenerateSpec spec;
  if (r.model().empty()) return Invalid("'model' is required");
  spec.input = r.input_case();
  switch (r.input_case()) {
    case v1::GenerateRequest::kPrompt:
      spec.prompt = r.prompt();
      break;
    case v1::GenerateRequest::kPromptIds:
      if (r.prompt_ids().ids().empty()) return Invalid("'prompt_ids' must not be empty");
      spec.prompt_ids.assign(r.prompt_ids().ids().begin(), r.prompt_ids().ids().end());
      break;
    case v1::GenerateRequest::kChat: {
      if (r.chat().messages().empty()) return Invalid("'chat.messages' must not be empty");
      int i = 0;
      for (const v1::ChatMessage& m : r.chat().messages()) {
        std::optional<std::string> role = CanonicalChatRole(m.role());
        if (!role.has_value()) {
          return Invalid(absl::StrCat("'chat.messages[", i, "].role' must be one of ", kChatRoles,
                                      "; not '", m.role(), "'"));
        }
        spec.messages.push_back({.role = *std::move(role), .content = m.content()});
        ++i;
      }
      break;
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      return Invalid("one of 'prompt', 'prompt_ids' or 'chat' is required");
  }
  // proto3 cannot tell 0 from unset: 0 means the default.
  if (r.max_tokens() < 0) {
    return Invalid(absl::StrCat("'max_tokens' must be at least 1 (or 0 for the default), not ",
                                r.max_tokens()));
  }
  if (r.max_tokens() > 0) spec.max_tokens = r.max_tokens();
  if (r.has_sampling()) {
    const v1::SamplingParams& s = r.sampling();
    if (!(s.temperature() >= 0.0f && s.temperature() <= 2.0f)) {
      return Invalid(
          absl::StrCat("'sampling.temperature' must be between 0 and 2, not ", s.temperature()));
    }
    if (!(s.top_p() >= 0.0f && s.top_p() <= 1.0f)) {
      return Invalid(absl::StrCat("'sampling.top_p' must be between 0 and 1, not ", s.top_p()));
    }
    if (s.top_k() < -1 || s.top_k() > kMaxTopK) {
      return Invalid(absl::StrCat("'sampling.top_k' must be between -1 (off) and ", kMaxTopK,
                                  ", not ", s.top_k()));
    }
    spec.sampling = {.temperature = s.temperature(),
                     .top_k = std::max<int64_t>(s.top_k(), 0),
                     .top_p = s.top_p() == 0.0f ? 1.0f : s.top_p(),
                     .seed = s.seed()};
  }
  if (static_cast<size_t>(r.stop_size()) > kMaxStopSequences) {
    return Invalid(absl::StrCat("'stop' may list at most ", kMaxStopSequences, " sequences, not ",
                                r.stop_size()));
  }
  for (const std::string& s : r.stop()) {
    if (s.empty()) return Invalid("a stop sequence must not be empty");
    spec.stop.push_back(s);
  }
  spec.ignore_eos = r.ignore_eos();
  spec.logprobs = r.logprobs();
  return spec;
}

v1::FinishReason ToProto(FinishReason f) {
  switch (f) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kNone:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

int64_t Millis(absl::Duration d) { return absl::ToInt64Milliseconds(d); }

}  // namespace

// ---- metrics -------------------------------------------------------------------------------

struct ApiService::Metrics {
  explicit Metrics(prometheus::Registry& registry)
      : requests(prometheus::BuildCounter()
                     .Name("strata_router_grpc_requests_total")
                     .Help("gRPC API calls answered, by method and status code")
                     .Register(registry)),
        in_flight(prometheus::BuildGauge()
                      .Name("strata_router_grpc_in_flight_requests")
                      .Help("Generate streams admitted and not finished")
                      .Register(registry)
                      .Add({})),
        ttft(
            prometheus::BuildHistogram()
                .Name("strata_router_grpc_time_to_first_token_seconds")
                .Help("From the Generate call's arrival to the first generated token")
                .Register(registry)
                .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                                 1, 2.5, 5, 10, 30, 60, 120, 300})),
        duration(prometheus::BuildHistogram()
                     .Name("strata_router_grpc_request_duration_seconds")
                     .Help("From the Generate call's arrival to the end of its stream")
                     .Register(registry)
                     .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                                      2.5, 5, 10, 30, 60, 120, 300,
                                                                      600, 1800})),
        prompt_tokens(prometheus::BuildCounter()
                          .Name("strata_router_grpc_prompt_tokens_total")
                          .Help("Prompt tokens of finished Generate calls")
                          .Register(registry)
                          .Add({})),
        cached_tokens(prometheus::BuildCounter()
                          .Name("strata_router_grpc_cached_prompt_tokens_total")
                          .Help("Prompt tokens of Generate calls served from the prefix cache")
                          .Register(registry)
                          .Add({})),
        completion_tokens(prometheus::BuildCounter()
                              .Name("strata_router_grpc_completion_tokens_total")
                              .Help("Tokens generated for Generate calls")
                              .Register(registry)
                              .Add({})) {}

  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Gauge& in_flight;
  prometheus::Histogram& ttft;
  prometheus::Histogram& duration;
  prometheus::Counter& prompt_tokens;
  prometheus::Counter& cached_tokens;
  prometheus::Counter& completion_tokens;
};

// ---- one Generate stream -------------------------------------------------------------------

// Deletes itself when its last reference goes: gRPC's (until OnDone), the tokenizer task's
// (while Prepare runs) and the upstream call's (until its final event has been handled). So
// every callback runs on a live object whatever order they come in.
//
// Threads: Begin on a gRPC thread; Prepare on the tokenizer pool, before the upstream call
// starts; OnEvent on the upstream's threads, one event at a time; OnCancel and OnWriteDone on
// gRPC threads. The generation's state (completion_, counts) is touched by Prepare, then only by
// OnEvent; what the writes share is under mu_.
class ApiService::Stream final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  Stream(ApiService& service, absl::Time start, std::string id)
      : service_(service), start_(start), id_(std::move(id)) {}

  // Right after construction, on the gRPC thread that asked for the stream.
  void Begin(grpc::CallbackServerContext& context, const v1::GenerateRequest& request) {
    context.AddInitialMetadata("x-request-id", id_);
    absl::StatusOr<std::string> tenant = service_.Authenticate(context);
    if (!tenant.ok()) return Reject(tenant.status());
    tenant_ = *std::move(tenant);
    auto traceparent = context.client_metadata().find("traceparent");
    traceparent_ = TraceparentFor(
        traceparent == context.client_metadata().end()
            ? absl::string_view()
            : absl::string_view(traceparent->second.data(), traceparent->second.size()));

    absl::StatusOr<GenerateSpec> spec = Validate(request);
    if (!spec.ok()) return Reject(spec.status());
    if (request.model() != service_.options_.served_model) {
      return Reject(absl::NotFoundError(absl::StrCat("The model '", request.model(),
                                                     "' does not exist; this server serves '",
                                                     service_.options_.served_model, "'")));
    }
    if (!service_.Admit()) {
      return Reject(absl::UnavailableError(absl::StrCat("The server is overloaded (",
                                                        service_.options_.max_in_flight,
                                                        " requests in progress); retry shortly")));
    }
    admitted_ = true;
    spec_ = *std::move(spec);
    completion_.emplace(service_.tokenizer_, spec_.stop, spec_.ignore_eos);
    Ref();  // the tokenizer task's
    service_.tokenizer_pool_.Schedule([this] {
      Prepare();
      Unref();
    });
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancel_requested_ = true;  // for Prepare, if the upstream call has not started
    }
    CancelUpstream();
  }

  void OnWriteDone(bool ok) override {
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok && !broken_) {
        // The stream broke: nobody reads more. Cancel; the final event still comes.
        broken_ = true;
        cancel = call_ != nullptr && !upstream_done_;
      }
      WriteLocked();
    }
    if (cancel) CancelUpstream();
  }

  void OnDone() override { Unref(); }

 private:
  ~Stream() override {
    std::unique_ptr<UpstreamCall> call;
    {
      absl::MutexLock lock(&mu_);
      call = std::move(call_);
    }
    service_.Retire(std::move(call));  // the last use of the service
  }

  void Ref() { refs_.fetch_add(1); }
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  // On the tokenizer pool: tokenize, fit the context, start the upstream call.
  void Prepare() {
    bool cancelled = false;
    {
      absl::MutexLock lock(&mu_);
      cancelled = cancel_requested_;
    }
    if (cancelled) return Fail(absl::CancelledError("the client cancelled the call"));
    const engine::Tokenizer& tokenizer = service_.tokenizer_;
    std::vector<int32_t> prompt;
    absl::string_view prompt_name = "prompt";
    switch (spec_.input) {
      case v1::GenerateRequest::kChat: {
        prompt_name = "chat messages";
        // Message content is only ever text: it cannot write the template's control tokens.
        absl::StatusOr<std::vector<int32_t>> ids = tokenizer.EncodeChat(spec_.messages, true);
        if (!ids.ok()) return Fail(ids.status());
        prompt = *std::move(ids);
        break;
      }
      case v1::GenerateRequest::kPromptIds:
        prompt = std::move(spec_.prompt_ids);
        if (absl::Status ids = CheckTokenIds(tokenizer, prompt, "prompt_ids"); !ids.ok()) {
          return Fail(ids);
        }
        break;
      default:
        prompt = EncodePrompt(tokenizer, spec_.prompt);
        break;
    }
    prompt_tokens_ = static_cast<int64_t>(prompt.size());
    absl::StatusOr<int64_t> max_tokens =
        FitToContext(prompt_tokens_, spec_.max_tokens, service_.options_.default_max_tokens,
                     service_.options_.max_context_tokens, prompt_name);
    if (!max_tokens.ok()) return Fail(max_tokens.status());
    completion_->set_max_tokens(*max_tokens);

    UpstreamRequest upstream{.request_id = id_,
                             .tenant = tenant_,
                             .traceparent = traceparent_,
                             .prompt = std::move(prompt),
                             .max_tokens = *max_tokens,
                             .sampling = spec_.sampling,
                             .ignore_eos = spec_.ignore_eos,
                             .logprobs = spec_.logprobs ? 0 : -1};
    upstream_ref_.store(true);
    Ref();  // the upstream's, until its final event has been handled
    std::unique_ptr<UpstreamCall> call = service_.upstream_.Start(
        std::move(upstream), [this](UpstreamEvent event) { OnEvent(std::move(event)); });
    if (call == nullptr) {  // an upstream bug; do not leave the client hanging
      Fail(absl::InternalError("the upstream did not start the request"));
      if (upstream_ref_.exchange(false)) Unref();
      return;
    }
    bool cancel = false;
    {
      absl::MutexLock lock(&mu_);
      call_ = std::move(call);
      cancel = (cancel_requested_ || broken_) && !upstream_done_;
    }
    if (cancel) CancelUpstream();
  }

  void OnEvent(UpstreamEvent event) {
    Process(event);
    if (event.done && upstream_ref_.exchange(false)) Unref();
  }

  void Process(UpstreamEvent& event) {
    if (accounted_.load()) return;  // failed before (an upstream that broke its contract)
    v1::GenerateResponse delta;
    std::string text;
    CompletionText& completion = *completion_;
    for (size_t i = 0; i < event.tokens.size() && completion.finish() == FinishReason::kNone; ++i) {
      const int32_t token = event.tokens[i];
      delta.add_token_ids(token);
      if (spec_.logprobs) delta.add_logprobs(i < event.logprobs.size() ? event.logprobs[i] : 0.0f);
      text += completion.Push(token);
    }
    if (delta.token_ids_size() > 0 && !saw_token_) {
      saw_token_ = true;
      ttft_ = service_.clock_.Now() - start_;
      service_.metrics_->ttft.Observe(absl::ToDoubleSeconds(ttft_));
    }
    // EOS or a stop sequence came here: the upstream need not go on (its final event follows).
    if (completion.finish() == FinishReason::kStop && !event.done) CancelUpstream();

    absl::Status status;
    if (event.done) {
      cached_tokens_ = event.cached_tokens;
      if (completion.finish() == FinishReason::kNone && !event.status.ok()) {
        status = event.status;
      } else {
        text += completion.Finish(event.finish);
        delta.set_finish_reason(ToProto(completion.finish()));
        v1::Usage* usage = delta.mutable_usage();
        usage->set_prompt_tokens(prompt_tokens_);
        usage->set_completion_tokens(completion.tokens());
        usage->set_cached_tokens(cached_tokens_);
      }
      // Accounted first: the slot is free by the time the client sees the end.
      Account(status);
    }
    delta.set_text(std::move(text));

    absl::MutexLock lock(&mu_);
    if (event.done) upstream_done_ = true;
    pending_.mutable_token_ids()->Add(delta.token_ids().begin(), delta.token_ids().end());
    pending_.mutable_logprobs()->Add(delta.logprobs().begin(), delta.logprobs().end());
    pending_.mutable_text()->append(delta.text());
    has_pending_ = has_pending_ || delta.token_ids_size() > 0 || !delta.text().empty();
    if (event.done) {
      done_ = true;
      final_status_ = status;
      if (status.ok()) {
        pending_.set_finish_reason(delta.finish_reason());
        *pending_.mutable_usage() = delta.usage();
        has_pending_ = true;
      }
    }
    WriteLocked();
  }

  void WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (done_ && (broken_ || !final_status_.ok())) {
      finished_ = true;
      Finish(final_status_.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "stream broken")
                                : proto::ToGrpc(final_status_));
      return;
    }
    if (!has_pending_ || broken_) return;
    current_.Swap(&pending_);
    pending_.Clear();
    has_pending_ = false;
    writing_ = true;
    if (done_) {
      finished_ = true;
      StartWriteAndFinish(&current_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(&current_);
    }
  }

  void CancelUpstream() {
    UpstreamCall* call = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (call_ == nullptr || upstream_done_) return;
      call = call_.get();
    }
    // call_ lives until the destructor, which waits for this (the caller holds a reference).
    call->Cancel();
  }

  // Refused before admission.
  void Reject(const absl::Status& status) {
    Account(status);
    absl::MutexLock lock(&mu_);
    finished_ = true;
    Finish(proto::ToGrpc(status));
  }

  // Failed after admission, before the upstream call started (or instead of it).
  void Fail(const absl::Status& status) {
    Account(status);
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    Finish(proto::ToGrpc(status));
  }

  // Counts and logs the outcome, once, and frees the in-flight slot.
  void Account(const absl::Status& status) {
    if (accounted_.exchange(true)) return;
    const absl::Duration elapsed = service_.clock_.Now() - start_;
    service_.CountResponse(kGenerate, status.code());
    if (!admitted_) {
      spdlog::info("{} grpc Generate tenant={} status={}: {}", id_, tenant_,
                   absl::StatusCodeToString(status.code()), ToStd(status.message()));
      return;
    }
    Metrics& m = *service_.metrics_;
    m.duration.Observe(absl::ToDoubleSeconds(elapsed));
    m.prompt_tokens.Increment(static_cast<double>(prompt_tokens_));
    m.cached_tokens.Increment(static_cast<double>(cached_tokens_));
    m.completion_tokens.Increment(static_cast<double>(completion_->tokens()));
    if (status.ok() || absl::IsCancelled(status)) {
      const char* finish = FinishReasonName(completion_->finish());
      spdlog::info(
          "{} grpc Generate tenant={} status={} prompt_tokens={} cached_tokens={} "
          "completion_tokens={} finish={} ttft_ms={} total_ms={}",
          id_, tenant_, absl::StatusCodeToString(status.code()), prompt_tokens_, cached_tokens_,
          completion_->tokens(), finish == nullptr ? "none" : finish,
          saw_token_ ? Millis(ttft_) : -1, Millis(elapsed));
    } else {
      // Client errors are routine (info); server-side failures are worth a look (warning).
      const bool client = status.code() == absl::StatusCode::kInvalidArgument ||
                          status.code() == absl::StatusCode::kOutOfRange ||
                          status.code() == absl::StatusCode::kNotFound;
      spdlog::log(client ? spdlog::level::info : spdlog::level::warn,
                  "{} grpc Generate tenant={} status={} prompt_tokens={} completion_tokens={} "
                  "total_ms={}: {}",
                  id_, tenant_, absl::StatusCodeToString(status.code()), prompt_tokens_,
                  completion_->tokens(), Millis(elapsed), ToStd(status.message()));
    }
    service_.ReleaseSlot();
  }

  ApiService& service_;
  const absl::Time start_;
  const std::string id_;
  std::atomic<int> refs_{1};  // gRPC's, until OnDone
  std::atomic<bool> upstream_ref_{false};
  std::atomic<bool> accounted_{false};

  // Set by Begin.
  bool admitted_ = false;
  std::string tenant_;
  std::string traceparent_;
  GenerateSpec spec_;

  // The generation (made by Begin on admission): Prepare, then the thread delivering upstream
  // events.
  std::optional<CompletionText> completion_;
  int64_t prompt_tokens_ = 0;
  int64_t cached_tokens_ = 0;
  bool saw_token_ = false;
  absl::Duration ttft_;

  absl::Mutex mu_;
  std::unique_ptr<UpstreamCall> call_ ABSL_GUARDED_BY(mu_);
  bool cancel_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool upstream_done_ ABSL_GUARDED_BY(mu_) = false;  // its final event came
  v1::GenerateResponse pending_ ABSL_GUARDED_BY(mu_), current_ ABSL_GUARDED_BY(mu_);
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
};

// ---- the service -----------------------------------------------------------------------------

ApiService::ApiService(ApiServiceOptions options, const engine::Tokenizer& tokenizer,
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
                      static_cast<size_t>(std::max<int64_t>(1, options_.max_in_flight))) {}

ApiService::~ApiService() {
  std::vector<std::unique_ptr<UpstreamCall>> calls;
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ == 0; };
    // Streams use this object until they are destroyed; the upstream promises their final
    // events soon after Cancel.
    while (!mu_.AwaitWithTimeout(absl::Condition(&idle), absl::Seconds(5))) {
      spdlog::warn("router gRPC API: stopping; waiting for {} streams to end", live_);
    }
    calls.swap(finished_calls_);
  }
}

grpc::ServerWriteReactor<v1::GenerateResponse>* ApiService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  ReapFinishedCalls();
  {
    absl::MutexLock lock(&mu_);
    ++live_;
  }
  auto* stream = new Stream(*this, clock_.Now(), NextId());
  stream->Begin(*context, *request);
  return stream;
}

grpc::ServerUnaryReactor* ApiService::ListModels(grpc::CallbackServerContext* context,
                                                 const v1::ListModelsRequest* /*request*/,
                                                 v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> tenant = Authenticate(*context);
  if (!tenant.ok()) {
    CountResponse(kListModels, tenant.status().code());
    reactor->Finish(proto::ToGrpc(tenant.status()));
    return reactor;
  }
  v1::ModelInfo* model = response->add_models();
  model->set_id(options_.served_model);
  model->set_max_context(options_.max_context_tokens);
  CountResponse(kListModels, absl::StatusCode::kOk);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

absl::StatusOr<std::string> ApiService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  return keys_.Authenticate(it == metadata.end()
                                ? absl::string_view()
                                : absl::string_view(it->second.data(), it->second.size()));
}

bool ApiService::Admit() {
  {
    absl::MutexLock lock(&mu_);
    if (in_flight_ >= options_.max_in_flight) return false;
    ++in_flight_;
  }
  metrics_->in_flight.Increment();
  return true;
}

void ApiService::ReleaseSlot() {
  metrics_->in_flight.Decrement();
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

void ApiService::Retire(std::unique_ptr<UpstreamCall> call) {
  absl::MutexLock lock(&mu_);
  --live_;
  if (call != nullptr) finished_calls_.push_back(std::move(call));
}

void ApiService::ReapFinishedCalls() {
  std::vector<std::unique_ptr<UpstreamCall>> calls;
  {
    absl::MutexLock lock(&mu_);
    calls.swap(finished_calls_);
  }
  // Destroyed here, on a gRPC thread, never inside the upstream's own callback.
}

void ApiService::CountResponse(absl::string_view method, absl::StatusCode code) {
  metrics_->requests
      .Add({{"method", std::string(method)}, {"status", absl::StatusCodeToString(code)}})
      .Increment();
}

std::string ApiService::NextId() {
  return absl::StrFormat("grpc-%016x%08x", id_prefix_, next_id_.fetch_add(1) & 0xffffffff);
}

}  // namespace strata::router
