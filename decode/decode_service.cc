#include "decode/decode_service.h"

#include <atomic>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_options.h"
#include "proto/grpc_status.h"
#include "spdlog/spdlog.h"

namespace strata::decode {
namespace {

v1::FinishReason ToProto(Finish f) {
  switch (f) {
    case Finish::kStop: return v1::FINISH_REASON_STOP;
    case Finish::kLength: return v1::FINISH_REASON_LENGTH;
    case Finish::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

// The prefill call of one request: owned jointly by the reactor (to cancel it) and gRPC's
// completion callback.
struct PrefillCall {
  grpc::ClientContext context;
  v1::PrefillRequest request;
  v1::PrefillReply reply;
  std::atomic<bool> cancelled{false};  // by this worker (its stream was cancelled)
  std::atomic<bool> failed{false};     // the prefill worker failed the call (or vanished)
  // The blocks and state slot lent to the prefill worker for this call, revoked when it ends.
  std::unique_ptr<transport::Grant> pool_grant, state_grant;
};

// One Decode.Generate stream. Scheduler events are coalesced into the next write while one is in
// flight; a stream with nothing to write for `heartbeat` gets an empty event (a keep-alive). The
// reactor finishes only after the scheduler's final event, so every scheduler callback runs while
// it is alive. It is reference counted: gRPC's reference goes in OnDone, the heartbeat thread
// holds one while it looks at the stream; the last one deletes it.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::TokenEvent>, public internal::Stream {
 public:
  GenerateReactor(DecodeService& service, grpc::CallbackServerContext* context, const v1::DecodeRequest& request)
      : service_(service), context_(context), id_(UniqueId(request.request_id())) {
    // Tells the router that whatever status ends this stream came from a live decode worker (a
    // crashed one sends no trailers), so it does not take this worker out of rotation.
    context->AddTrailingMetadata("strata-served-by", "decode");
    service_.Register(this);
    Request r;
    r.id = id_;
    r.prompt.assign(request.prompt().begin(), request.prompt().end());
    r.max_tokens = request.max_tokens();
    r.sampling = {.temperature = request.sampling().temperature(),
                  .top_k = request.sampling().top_k(),
                  .top_p = request.sampling().top_p() == 0 ? 1.0f : request.sampling().top_p(),
                  .seed = request.sampling().seed()};
    r.ignore_eos = request.ignore_eos();
    r.logprobs = request.logprobs();
    r.cache_namespace = request.cache_namespace();
    cache_namespace_ = request.cache_namespace();
    // The prompt's last token is always computed here (its logits give the first token).
    if (!request.prefill_address().empty() && r.prompt.size() > 1) {
      r.remote_prefill_tokens = static_cast<int64_t>(r.prompt.size()) - 1;
      prefill_address_ = request.prefill_address();
      traceparent_ = request.traceparent();
    }
    Callbacks callbacks;
    if (r.remote_prefill_tokens > 0) {
      std::vector<int32_t> tokens(r.prompt.begin(), r.prompt.end() - 1);
      callbacks.on_admitted = [this, tokens = std::move(tokens)](const Admission& a) { StartPrefill(a, tokens); };
    }
    callbacks.on_event = [this](Event e) { OnEvent(std::move(e)); };
    absl::Status submitted = service_.scheduler().Submit(std::move(r), std::move(callbacks));
    if (!submitted.ok()) {
      Finish(proto::ToGrpc(submitted));
      return;
    }
  }

  void OnCancel() override {
    service_.scheduler().Cancel(id_);
    absl::MutexLock lock(&mu_);
    if (prefill_) {
      prefill_->cancelled = true;
      prefill_->context.TryCancel();
    }
  }

  // From the heartbeat thread (which holds a reference): an empty event if the stream has been
  // quiet for `heartbeat`.
  void Heartbeat(absl::Time now) override {
    Op op;
    {
      absl::MutexLock lock(&mu_);
      if (done_ || finished_ || writing_ || broken_ || has_pending_) return;
      if (now - last_write_ < service_.options().heartbeat) return;
      has_pending_ = true;  // pending_ is empty: a keep-alive
      op = NextOpLocked();
    }
    Run(op);  // a write, never a finish (done_ is false)
  }

  void Ref() override { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() override {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  void OnWriteDone(bool ok) override {
    Op op;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The stream broke: nobody will read more. Cancel; the final event still comes.
        broken_ = true;
        service_.scheduler().Cancel(id_);
      }
      op = NextOpLocked();
    }
    Run(op);  // last: a finishing op may delete this
  }

  void OnDone() override {
    service_.Unregister(this);
    Unref();  // gRPC's
  }

  // The scheduler and the prefill worker find a request by its id; the router's ids are unique,
  // but one client's repeated id must never cancel or land another's request, so each stream gets
  // its own.
  static std::string UniqueId(const std::string& request_id) {
    static std::atomic<uint64_t> next{0};
    return absl::StrCat(request_id, "#", next.fetch_add(1, std::memory_order_relaxed));
  }

 private:
  void StartPrefill(const Admission& admission, const std::vector<int32_t>& tokens) {
    auto call = std::make_shared<PrefillCall>();
    call->request.set_request_id(id_);
    call->request.mutable_tokens()->Add(tokens.begin(), tokens.end());
    call->request.set_traceparent(traceparent_);
    call->request.set_cache_namespace(cache_namespace_);
    Scheduler* scheduler = &service_.scheduler();
    if (absl::Status granted = service_.GrantTarget(admission, call->request.mutable_target(), &call->pool_grant,
                                                    &call->state_grant);
        !granted.ok()) {
      return scheduler->Landed(id_, Annotate(granted, "lending the KV blocks to the prefill worker"));
    }
    call->context.set_deadline(std::chrono::system_clock::now() +
                               absl::ToChronoMilliseconds(service_.options().prefill_timeout));
    if (!traceparent_.empty()) call->context.AddMetadata("traceparent", traceparent_);
    {
      absl::MutexLock lock(&mu_);
      prefill_ = call;
    }
    auto stub = service_.PrefillStub(prefill_address_);
    std::string id = id_, address = prefill_address_;
    stub->async()->Prefill(&call->context, &call->request, &call->reply,
                           [call, scheduler, id, address](grpc::Status s) {
                             absl::Status status = proto::FromGrpc(s);
                             if (!status.ok()) {
                               status = Annotate(status, absl::StrCat("prefill worker ", address));
                               if (!call->cancelled) {
                                 call->failed = true;  // before Landed: the final event follows it
                                 spdlog::warn("request {}: {}", id, status.ToString());
                               }
                             }
                             // The fence: once the grants are revoked no put of this transfer
                             // lands, where the transport enforces it; elsewhere only a prefill
                             // worker that answered after settling its puts vouches for that.
                             const bool enforced = call->pool_grant->enforced() && call->state_grant->enforced();
                             const bool settled =
                                 s.ok() || call->context.GetServerTrailingMetadata().count("strata-prefill-settled") > 0;
                             call->pool_grant.reset();
                             call->state_grant.reset();
                             scheduler->Landed(id, Landing{.status = status,
                                                           .transfer_wait_ms = call->reply.transfer_wait_ms(),
                                                           .fenced = enforced || settled,
                                                           .cached_tokens = s.ok() ? call->reply.cached_tokens() : 0,
                                                           .checkpoint_tokens = s.ok() ? call->reply.checkpoint_tokens() : 0});
                           });
  }

  void OnEvent(Event e) {
    Op op;
    {
      absl::MutexLock lock(&mu_);
      pending_.mutable_token_ids()->Add(e.tokens.begin(), e.tokens.end());
      pending_.mutable_logprobs()->Add(e.logprobs.begin(), e.logprobs.end());
      has_pending_ = has_pending_ || !e.tokens.empty();
      if (e.done) {
        done_ = true;
        final_status_ = e.status;
        pending_.set_finish_reason(ToProto(e.finish));
        pending_.set_cached_tokens(e.cached_tokens);
        has_pending_ = has_pending_ || e.finish != Finish::kNone;
      }
      op = NextOpLocked();
    }
    Run(op);  // last: a finishing op may delete this
  }

  // What to start on the stream next. Decided under mu_, started after releasing it: once Finish
  // or StartWriteAndFinish is called, gRPC may run OnDone (delete this) on another thread at
  // once, so neither may be called with mu_ held, nor may anything touch the reactor afterwards.
  // A started write owns current_ until OnWriteDone (writing_ keeps everyone else off it).
  enum class Op { kNone, kWrite, kWriteAndFinish, kFinish };

  Op NextOpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return Op::kNone;
    if (done_ && (broken_ || !final_status_.ok())) {
      finished_ = true;
      prefill_failed_ = prefill_ != nullptr && prefill_->failed;
      finish_status_ = final_status_.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "stream broken")
                                          : proto::ToGrpc(final_status_);
      return Op::kFinish;
    }
    if (!has_pending_ || broken_) return Op::kNone;
    current_.Swap(&pending_);
    pending_.Clear();
    has_pending_ = false;
    writing_ = true;
    last_write_ = absl::Now();
    if (done_) {
      finished_ = true;
      return Op::kWriteAndFinish;
    }
    return Op::kWrite;
  }

  void Run(Op op) {
    switch (op) {
      case Op::kNone: return;
      case Op::kWrite: return StartWrite(&current_);
      case Op::kWriteAndFinish: return StartWriteAndFinish(&current_, grpc::WriteOptions(), grpc::Status::OK);
      case Op::kFinish:
        // Which prefill worker failed, so the router can retry elsewhere and stop choosing it.
        if (prefill_failed_) context_->AddTrailingMetadata("strata-prefill-failed", prefill_address_);
        return Finish(finish_status_);
    }
  }

  DecodeService& service_;
  grpc::CallbackServerContext* const context_;  // valid until OnDone
  const std::string id_;
  std::string prefill_address_, traceparent_, cache_namespace_;
  absl::Mutex mu_;
  std::shared_ptr<PrefillCall> prefill_ ABSL_GUARDED_BY(mu_);
  v1::TokenEvent pending_ ABSL_GUARDED_BY(mu_), current_ ABSL_GUARDED_BY(mu_);
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  grpc::Status finish_status_;  // set once, with finished_, before Finish is called
  bool prefill_failed_ = false;  // likewise
  absl::Time last_write_ ABSL_GUARDED_BY(mu_) = absl::Now();
  std::atomic<int> refs_{1};  // gRPC's until OnDone
};

}  // namespace

absl::StatusOr<std::unique_ptr<DecodeService>> DecodeService::Create(Scheduler& scheduler, engine::KvPool& pool,
                                                                     transport::Transport& transport,
                                                                     const DecodeServiceOptions& options) {
  std::unique_ptr<DecodeService> s(new DecodeService(scheduler, pool, transport, options));
  STRATA_ASSIGN_OR_RETURN(s->pool_registration_, transport.Register(pool.memory(), static_cast<size_t>(pool.memory_bytes())));
  STRATA_ASSIGN_OR_RETURN(s->landing_registration_, transport.Register(scheduler.landing_memory(), scheduler.landing_bytes()));
  s->heartbeat_thread_ = std::thread([p = s.get()] { p->HeartbeatLoop(); });
  return s;
}

DecodeService::~DecodeService() {
  stop_.Notify();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  // The server's Shutdown returned before this, after every stream's OnDone (and its Unregister)
  // ran; that order passes through libgrpc++, unseen by ThreadSanitizer: taking live_mu_ shows it.
  absl::MutexLock lock(&live_mu_);
  live_.clear();
}

void DecodeService::Register(internal::Stream* stream) {
  absl::MutexLock lock(&live_mu_);
  live_.insert(stream);
}

void DecodeService::Unregister(internal::Stream* stream) {
  absl::MutexLock lock(&live_mu_);
  live_.erase(stream);
}

void DecodeService::HeartbeatLoop() {
  const absl::Duration tick = std::max(options_.heartbeat / 4, absl::Milliseconds(10));
  while (!stop_.WaitForNotificationWithTimeout(tick)) {
    std::vector<internal::Stream*> streams;
    {
      absl::MutexLock lock(&live_mu_);
      for (internal::Stream* s : live_) {
        s->Ref();  // kept alive past Unregister until we are done with it
        streams.push_back(s);
      }
    }
    const absl::Time now = absl::Now();
    for (internal::Stream* s : streams) {
      s->Heartbeat(now);
      s->Unref();
    }
  }
}

std::shared_ptr<v1::Prefill::Stub> DecodeService::PrefillStub(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& stub = stubs_[address];
  if (!stub) stub = v1::Prefill::NewStub(proto::InternalChannel(address));
  return stub;
}

absl::Status DecodeService::GrantTarget(const Admission& admission, v1::KvTarget* target,
                                       std::unique_ptr<transport::Grant>* pool_grant,
                                       std::unique_ptr<transport::Grant>* state_grant) {
  const engine::KvLayout& layout = pool_.layout();
  const uint64_t block_bytes = static_cast<uint64_t>(layout.block_bytes());
  const uint64_t state_bytes = static_cast<uint64_t>(layout.state_bytes());
  std::vector<transport::ByteRange> blocks;
  for (int32_t b : admission.blocks) blocks.push_back({static_cast<uint64_t>(b) * block_bytes, block_bytes});
  STRATA_ASSIGN_OR_RETURN(*pool_grant, transport_.GrantAccess(*pool_registration_, blocks));
  const transport::ByteRange slots[2] = {{static_cast<uint64_t>(admission.state_offset), state_bytes},
                                         {static_cast<uint64_t>(admission.checkpoint_offset), state_bytes}};
  STRATA_ASSIGN_OR_RETURN(*state_grant, transport_.GrantAccess(*landing_registration_, slots));
  const transport::RemoteRegion pool = (*pool_grant)->Describe(), landing = (*state_grant)->Describe();
  target->set_transport_address(transport_.address());
  target->set_layout_fingerprint(layout.fingerprint());
  auto* p = target->mutable_pool();
  p->set_address(pool.address);
  p->set_length(pool.length);
  p->set_key(pool.key);
  target->set_block_bytes(block_bytes);
  target->mutable_block_ids()->Add(admission.blocks.begin(), admission.blocks.end());
  auto* state = target->mutable_state();
  state->set_address(landing.address + slots[0].offset);
  state->set_length(state_bytes);
  state->set_key(landing.key);
  auto* checkpoint = target->mutable_checkpoint();
  checkpoint->set_address(landing.address + slots[1].offset);
  checkpoint->set_length(state_bytes);
  checkpoint->set_key(landing.key);
  return absl::OkStatus();
}

grpc::ServerWriteReactor<v1::TokenEvent>* DecodeService::Generate(grpc::CallbackServerContext* context,
                                                                 const v1::DecodeRequest* request) {
  return new GenerateReactor(*this, context, *request);
}

grpc::ServerUnaryReactor* DecodeService::Status(grpc::CallbackServerContext* context, const v1::WorkerStatusRequest*,
                                                v1::WorkerStatus* reply) {
  SchedulerStats s = scheduler_.stats();
  reply->set_running_requests(s.running);
  reply->set_queued_requests(s.queued);
  reply->set_free_kv_blocks(s.free_blocks);
  reply->set_total_kv_blocks(s.total_blocks);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace strata::decode
