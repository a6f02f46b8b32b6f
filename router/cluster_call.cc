#include "router/cluster_call.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "proto/grpc_status.h"
#include "router/cluster_upstream.h"
#include "spdlog/spdlog.h"

namespace strata::router::internal {
namespace {

FinishReason FromProto(v1::FinishReason f) {
  switch (f) {
    case v1::FINISH_REASON_STOP:
      return FinishReason::kStop;
    case v1::FINISH_REASON_LENGTH:
      return FinishReason::kLength;
    default:
      return FinishReason::kNone;
  }
}

std::string Trailer(const grpc::ClientContext& context, const char* key) {
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(key);
  return it == trailers.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

// Reads one attempt's Decode.Generate stream into its call; deletes itself when the stream ends.
class DecodeReader final : public grpc::ClientReadReactor<v1::TokenEvent> {
 public:
  DecodeReader(std::shared_ptr<ClusterCall> call, std::shared_ptr<Attempt> attempt)
      : call_(std::move(call)), attempt_(std::move(attempt)) {}

  void Start(v1::Decode::Stub& stub) {
    stub.async()->Generate(&attempt_->context, &attempt_->request, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    call_->OnStreamEvent(*attempt_, event_);
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& s) override {
    call_->OnStreamEnd(attempt_, s);
    delete this;
  }

 private:
  std::shared_ptr<ClusterCall> call_;
  std::shared_ptr<Attempt> attempt_;
  v1::TokenEvent event_;
};

}  // namespace

ClusterCall::ClusterCall(ClusterUpstream& cluster, UpstreamRequest request,
                         std::function<void(UpstreamEvent)> on_event)
    : cluster_(cluster), request_(std::move(request)), on_event_(std::move(on_event)) {}

void ClusterCall::Begin() {
  deadline_ = cluster_.clock().Now() + cluster_.options().request_timeout;
  if (!cluster_.wants_prefix()) return StartAttempt();
  // Where the prompt's prefix is cached, once: every attempt (a retry, a move) routes by it.
  cluster_.LookupPrefix(request_, [self = shared_from_this()](PrefixHits hits) {
    {
      absl::MutexLock lock(&self->mu_);
      self->hits_ = std::move(hits);
    }
    self->StartAttempt();
  });
}

void ClusterCall::Cancel() {
  std::shared_ptr<Attempt> attempt;
  bool waiting = false;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_ || ended_) return;
    cancelled_ = true;
    attempt = current_;
    waiting = waiting_;
    waiting_ = false;
  }
  if (attempt != nullptr) return attempt->context.TryCancel();  // its end delivers the final event
  if (waiting) End({.done = true, .status = absl::CancelledError("the request was cancelled")});
}

void ClusterCall::Tick(absl::Time now) {
  std::shared_ptr<Attempt> silent;
  bool retry = false;
  {
    absl::MutexLock lock(&mu_);
    if (current_ != nullptr && !current_->abandoned &&
        now - current_->last_event > cluster_.options().inactivity_timeout) {
      current_->abandoned = true;
      silent = current_;
    }
    if (waiting_ && now - last_try_ >= absl::Milliseconds(250)) {
      waiting_ = false;
      retry = true;
    }
  }
  if (silent != nullptr) {
    spdlog::warn("request {}: decode worker {} sent nothing for {}; abandoning it", request_.request_id,
                 silent->decode_id, absl::FormatDuration(cluster_.options().inactivity_timeout));
    silent->context.TryCancel();
  }
  if (retry) StartAttempt();
}

void ClusterCall::StartAttempt() {
  std::vector<int32_t> prompt = request_.prompt;
  int64_t max_tokens = 0;
  std::vector<std::string> avoid;
  PrefixHits hits;
  int attempt_number = 0;
  bool cancelled = false;
  {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    cancelled = cancelled_;
    prompt.insert(prompt.end(), streamed_.begin(), streamed_.end());
    max_tokens = request_.max_tokens - static_cast<int64_t>(streamed_.size());
    avoid = avoid_;
    hits = hits_;
    attempt_number = attempts_ + 1;
  }
  if (cancelled) return End({.done = true, .status = absl::CancelledError("the request was cancelled")});
  if (max_tokens <= 0) {
    // Every token was streamed; only the worker's final event was lost.
    return End({.done = true, .finish = FinishReason::kLength});
  }
  absl::StatusOr<ClusterUpstream::Route> route =
      cluster_.Choose(static_cast<int64_t>(prompt.size()), max_tokens, avoid, hits);
  const absl::Time now = cluster_.clock().Now();
  if (!route.ok()) {
    absl::Status failure;
    {
      absl::MutexLock lock(&mu_);
      if (attempts_ > 0 && !cancelled_) {
        // A retry: a supervised worker may be coming back (or the registry catching up).
        if (!waiting_ && waiting_since_ == absl::Time()) waiting_since_ = now;
        if (now - waiting_since_ < cluster_.options().worker_wait) {
          waiting_ = true;
          last_try_ = now;
          return;
        }
      }
      failure = last_failure_.ok() ? route.status()
                                   : Annotate(last_failure_, absl::StrCat("and then ", route.status().message()));
    }
    return End({.done = true, .status = failure});
  }

  auto attempt = std::make_shared<Attempt>();
  attempt->decode_id = route->decode.id;
  attempt->decode_address = route->decode.grpc_address;
  v1::DecodeRequest& r = attempt->request;
  r.set_request_id(request_.request_id);
  r.mutable_prompt()->Add(prompt.begin(), prompt.end());
  r.set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(request_.sampling.temperature);
  r.mutable_sampling()->set_top_k(request_.sampling.top_k);
  r.mutable_sampling()->set_top_p(request_.sampling.top_p);
  r.mutable_sampling()->set_seed(request_.sampling.seed);
  r.set_ignore_eos(request_.ignore_eos);
  r.set_logprobs(request_.logprobs >= 0);
  if (route->prefill.has_value()) {
    r.set_prefill_address(route->prefill->grpc_address);
    attempt->prefill_id = route->prefill->id;
  }
  r.set_traceparent(request_.traceparent);
  r.set_cache_namespace(CacheNamespace(request_));
  if (!request_.traceparent.empty()) attempt->context.AddMetadata("traceparent", request_.traceparent);
  attempt->context.AddMetadata("x-request-id", request_.request_id);
  attempt->context.set_deadline(absl::ToChronoTime(deadline_));
  bool cancel = false;
  {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    ++attempts_;
    waiting_since_ = absl::Time();
    attempt->last_event = now;
    current_ = attempt;
    cancel = cancelled_;
  }
  if (attempt_number > 1) {
    spdlog::info("request {}: attempt {} on decode worker {}{}", request_.request_id, attempt_number,
                 attempt->decode_id, attempt->prefill_id.empty() ? "" : absl::StrCat(" with prefill worker ", attempt->prefill_id));
  }
  auto* reader = new DecodeReader(shared_from_this(), attempt);
  reader->Start(*cluster_.DecodeStub(attempt->decode_id, attempt->decode_address));
  if (cancel) attempt->context.TryCancel();
}

void ClusterCall::OnStreamEvent(Attempt& attempt, const v1::TokenEvent& event) {
  UpstreamEvent e;
  e.tokens.assign(event.token_ids().begin(), event.token_ids().end());
  e.logprobs.assign(event.logprobs().begin(), event.logprobs().end());
  {
    absl::MutexLock lock(&mu_);
    attempt.last_event = cluster_.clock().Now();
    if (event.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish_ = FromProto(event.finish_reason());
    // Of the client's prompt: a request that moved resent its streamed tokens as prompt too.
    if (event.finish_reason() != v1::FINISH_REASON_UNSPECIFIED || event.cached_tokens() > 0) {
      cached_ = std::min<int64_t>(event.cached_tokens(), static_cast<int64_t>(request_.prompt.size()));
    }
    streamed_.insert(streamed_.end(), e.tokens.begin(), e.tokens.end());
  }
  // Tokens, or a keep-alive (nothing yet); a last event carrying only the finish reason waits for
  // the stream's end.
  if (!e.tokens.empty() || event.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) on_event_(std::move(e));
}

void ClusterCall::OnStreamEnd(const std::shared_ptr<Attempt>& attempt, const grpc::Status& status) {
  FinishReason finish;
  int64_t cached;
  bool cancelled;
  {
    absl::MutexLock lock(&mu_);
    if (current_ == attempt) current_.reset();
    finish = finish_;
    cached = cached_;
    cancelled = cancelled_;
  }
  if (status.ok()) {
    if (finish != FinishReason::kNone) return End({.done = true, .finish = finish, .cached_tokens = cached});
    return End({.done = true,
                .status = absl::DataLossError(absl::StrCat("decode worker ", attempt->decode_id,
                                                           " ended the stream without a finish reason"))});
  }
  if (cancelled) return End({.done = true, .status = absl::CancelledError("the request was cancelled")});
  absl::Status failure;
  const bool retry = Classify(*attempt, status, &failure);
  bool again = false;
  size_t streamed = 0;
  int attempts = 0;
  {
    absl::MutexLock lock(&mu_);
    last_failure_ = failure;
    attempts = attempts_;
    streamed = streamed_.size();
    again = retry && attempts_ < cluster_.options().max_attempts && !cancelled_;
  }
  if (!again) {
    if (retry && attempts > 1) failure = Annotate(failure, absl::StrCat("gave up after ", attempts, " attempts"));
    return End({.done = true, .status = failure});
  }
  spdlog::warn("request {}: {}; moving it on ({} tokens streamed so far, attempt {} of {})", request_.request_id,
               failure.ToString(), streamed, attempts + 1, cluster_.options().max_attempts);
  StartAttempt();
}

bool ClusterCall::Classify(const Attempt& attempt, const grpc::Status& status, absl::Status* failure) {
  const std::string& decode = attempt.decode_id;
  if (attempt.abandoned) {
    cluster_.Suspect(decode);
    absl::MutexLock lock(&mu_);
    avoid_.push_back(decode);
    *failure = absl::UnavailableError(
        absl::StrCat("decode worker ", decode, " sent nothing for ",
                     absl::FormatDuration(cluster_.options().inactivity_timeout), " (hung?)"));
    return true;
  }
  const bool from_worker = !Trailer(attempt.context, "strata-served-by").empty();
  const std::string prefill_failed = Trailer(attempt.context, "strata-prefill-failed");
  if (!prefill_failed.empty()) {
    // The decode worker is fine; its prefill worker failed (or vanished). Retry without it.
    if (!attempt.prefill_id.empty()) cluster_.Suspect(attempt.prefill_id);
    *failure = Annotate(proto::FromGrpc(status),
                        absl::StrCat("prefill worker ", attempt.prefill_id.empty() ? prefill_failed : attempt.prefill_id,
                                     " failed"));
    return true;
  }
  if (!from_worker) {
    // No trailers: the connection broke (the worker died, or stopped answering keepalive pings).
    cluster_.Suspect(decode);
    absl::MutexLock lock(&mu_);
    avoid_.push_back(decode);
    *failure = Annotate(proto::FromGrpc(status), absl::StrCat("decode worker ", decode, " failed"));
    return status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED;
  }
  *failure = Annotate(proto::FromGrpc(status), absl::StrCat("decode worker ", decode));
  if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
    // Its queue is full: another worker may have room.
    absl::MutexLock lock(&mu_);
    avoid_.push_back(decode);
    return true;
  }
  return false;  // the worker's own verdict on the request (invalid, too long, …)
}

void ClusterCall::End(UpstreamEvent event) {
  {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    ended_ = true;
    waiting_ = false;
  }
  event.done = true;
  on_event_(std::move(event));
  cluster_.Forget(this);
}

}  // namespace strata::router::internal
