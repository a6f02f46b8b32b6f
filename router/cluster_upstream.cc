#include "router/cluster_upstream.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_status.h"
#include "spdlog/spdlog.h"

namespace strata::router {
namespace {

// Shared by the caller's handle and the stream reactor: the context outlives both.
struct CallState {
  grpc::ClientContext context;
};

class CallHandle final : public UpstreamCall {
 public:
  explicit CallHandle(std::shared_ptr<CallState> state) : state_(std::move(state)) {}
  void Cancel() override { state_->context.TryCancel(); }

 private:
  std::shared_ptr<CallState> state_;
};

class FailedCall final : public UpstreamCall {
 public:
  void Cancel() override {}
};

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

// Reads one Decode.Generate stream; deletes itself when it ends.
class DecodeReader final : public grpc::ClientReadReactor<v1::TokenEvent> {
 public:
  DecodeReader(std::shared_ptr<CallState> state, v1::DecodeRequest request,
               std::function<void(UpstreamEvent)> on_event,
               std::function<void(const grpc::Status&)> on_end)
      : state_(std::move(state)),
        request_(std::move(request)),
        on_event_(std::move(on_event)),
        on_end_(std::move(on_end)) {}

  void Start(v1::Decode::Stub& stub) {
    stub.async()->Generate(&state_->context, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    UpstreamEvent e;
    e.tokens.assign(event_.token_ids().begin(), event_.token_ids().end());
    e.logprobs.assign(event_.logprobs().begin(), event_.logprobs().end());
    if (event_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED)
      finish_ = FromProto(event_.finish_reason());
    cached_ = event_.cached_tokens();
    if (!e.tokens.empty()) on_event_(std::move(e));
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& s) override {
    UpstreamEvent e;
    e.done = true;
    e.cached_tokens = cached_;
    if (s.ok() && finish_ != FinishReason::kNone) {
      e.finish = finish_;
    } else if (s.ok()) {
      e.status = absl::DataLossError("the decode worker ended the stream without a finish reason");
    } else {
      e.status = proto::FromGrpc(s);
      if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
        e.status = Annotate(e.status, "decode worker unavailable");
      }
    }
    on_end_(s);
    on_event_(std::move(e));
    delete this;
  }

 private:
  std::shared_ptr<CallState> state_;
  v1::DecodeRequest request_;
  std::function<void(UpstreamEvent)> on_event_;
  std::function<void(const grpc::Status&)> on_end_;
  v1::TokenEvent event_;
  FinishReason finish_ = FinishReason::kNone;
  int64_t cached_ = 0;
};

}  // namespace

ClusterUpstream::ClusterUpstream(registry::Registry& registry, std::unique_ptr<Policy> policy,
                                 const ClusterOptions& options, Clock& clock)
    : registry_(registry), policy_(std::move(policy)), options_(options), clock_(clock) {
  refresher_ = std::thread([this] {
    while (!stop_.WaitForNotificationWithTimeout(options_.refresh)) {
      absl::Status s = Refresh();
      if (!s.ok()) spdlog::warn("registry refresh failed: {}", s.ToString());
    }
  });
}

ClusterUpstream::~ClusterUpstream() {
  stop_.Notify();
  refresher_.join();
}

absl::Status ClusterUpstream::Refresh() {
  STRATA_ASSIGN_OR_RETURN(auto prefill, registry_.List("prefill"));
  STRATA_ASSIGN_OR_RETURN(auto decode, registry_.List("decode"));
  auto serves_model = [&](const registry::ServiceRecord& r) {
    return !options_.model.empty() && r.model != options_.model;
  };
  std::erase_if(prefill, serves_model);
  std::erase_if(decode, serves_model);
  absl::MutexLock lock(&mu_);
  auto log_changes = [](const std::vector<registry::ServiceRecord>& before,
                        const std::vector<registry::ServiceRecord>& after) {
    for (const auto& a : after) {
      if (std::none_of(before.begin(), before.end(), [&](const auto& b) { return b.id == a.id; })) {
        spdlog::info("{} worker {} joined at {}", a.role, a.id, a.grpc_address);
      }
    }
    for (const auto& b : before) {
      if (std::none_of(after.begin(), after.end(), [&](const auto& a) { return b.id == a.id; })) {
        spdlog::info("{} worker {} left (lease lapsed or deregistered)", b.role, b.id);
      }
    }
  };
  log_changes(snapshot_.prefill, prefill);
  log_changes(snapshot_.decode, decode);
  snapshot_.prefill = std::move(prefill);
  snapshot_.decode = std::move(decode);
  sent_since_refresh_.clear();
  const absl::Time now = clock_.Now();
  absl::erase_if(suspects_, [&](const auto& kv) { return kv.second <= now; });
  return absl::OkStatus();
}

ClusterSnapshot ClusterUpstream::snapshot() const {
  absl::MutexLock lock(&mu_);
  return snapshot_;
}

void ClusterUpstream::Suspect(const std::string& id) {
  absl::MutexLock lock(&mu_);
  suspects_[id] = clock_.Now() + options_.suspect_for;
}

std::shared_ptr<v1::Decode::Stub> ClusterUpstream::DecodeStub(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[address];
  if (!stub)
    stub = v1::Decode::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  return stub;
}

std::unique_ptr<UpstreamCall> ClusterUpstream::Start(UpstreamRequest request,
                                                     std::function<void(UpstreamEvent)> on_event) {
  registry::ServiceRecord prefill, decode;
  bool has_prefill = false;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Candidate> p, d;
    for (const auto& r : snapshot_.prefill) {
      if (!suspects_.contains(r.id)) p.push_back({&r, sent_since_refresh_[r.id]});
    }
    for (const auto& r : snapshot_.decode) {
      if (!suspects_.contains(r.id)) d.push_back({&r, sent_since_refresh_[r.id]});
    }
    const int64_t prompt = static_cast<int64_t>(request.prompt.size());
    const int64_t blocks =
        (prompt + request.max_tokens + options_.block_tokens - 1) / options_.block_tokens;
    auto choice = policy_->Choose(p, d, prompt, blocks);
    if (!choice.ok()) {
      UpstreamEvent e;
      e.done = true;
      e.status = choice.status();
      on_event(std::move(e));
      return std::make_unique<FailedCall>();
    }
    decode = *d[static_cast<size_t>(choice->decode)].record;
    ++sent_since_refresh_[decode.id];
    if (choice->prefill >= 0) {
      prefill = *p[static_cast<size_t>(choice->prefill)].record;
      has_prefill = true;
      ++sent_since_refresh_[prefill.id];
    }
  }
  v1::DecodeRequest r;
  r.set_request_id(request.request_id);
  r.mutable_prompt()->Add(request.prompt.begin(), request.prompt.end());
  r.set_max_tokens(request.max_tokens);
  r.mutable_sampling()->set_temperature(request.sampling.temperature);
  r.mutable_sampling()->set_top_k(request.sampling.top_k);
  r.mutable_sampling()->set_top_p(request.sampling.top_p);
  r.mutable_sampling()->set_seed(request.sampling.seed);
  r.set_ignore_eos(request.ignore_eos);
  r.set_logprobs(request.logprobs >= 0);
  if (has_prefill) r.set_prefill_address(prefill.grpc_address);
  r.set_traceparent(request.traceparent);

  auto state = std::make_shared<CallState>();
  if (!request.traceparent.empty()) state->context.AddMetadata("traceparent", request.traceparent);
  state->context.AddMetadata("x-request-id", request.request_id);
  const std::string decode_id = decode.id;
  CallState* raw = state.get();
  auto* reader = new DecodeReader(
      state, std::move(r), std::move(on_event), [this, decode_id, raw](const grpc::Status& s) {
        // A live worker's own errors carry its trailer; a connection that broke has none.
        const bool from_worker =
            raw->context.GetServerTrailingMetadata().count("strata-served-by") > 0;
        if (s.error_code() == grpc::StatusCode::UNAVAILABLE && !from_worker) {
          spdlog::warn("decode worker {} is unreachable ({}); out of rotation", decode_id,
                       s.error_message());
          Suspect(decode_id);
        }
      });
  reader->Start(*DecodeStub(decode.grpc_address));
  return std::make_unique<CallHandle>(std::move(state));
}

}  // namespace strata::router
