// UcxTransport: the Transport over UCX's UCP API (1.13): one ucp_context (RMA, AM, WAKEUP) and one
// ucp_worker in UCS_THREAD_MODE_SINGLE, touched only by the transport's progress thread. Callers
// queue operations and wake the thread through an eventfd; the thread issues them to UCP, drives
// ucp_worker_progress and sleeps on the worker's event fd (ucp_worker_arm) when idle.
//
// Ordering (what Endpoint promises and what UCX does not give for free): UCP does not order RMA
// against active messages (they may travel on different lanes, e.g. cma for puts and shared
// memory for messages), and does not promise to deliver messages in issue order either. So:
//   * a Send waits until every Put issued before it on the endpoint is known to be remotely
//     complete (an ucp_ep_flush_nbx issued for it, or a Flush the caller issued), and Sends and
//     Flushes of one endpoint leave in issue order through a small per-endpoint queue;
//   * every message carries (stream, seq) in its AM header; the receiver delivers each stream's
//     messages in seq order (buffering the few that arrive early) and forgets a stream when its
//     endpoint is closed cleanly. All messages use one UCX AM id; the caller's id is in the header.
//
// Puts take one of two paths (UcxOptions::put_path). RMA: ucp_put_nbx, each request released at
// once; the completion is the ep flush that covers the put (one per loop round, or at once for a
// PutMany of kEarlyFlushBytes or more). Messages (where UCX would emulate RMA over tcp): kPutData
// active messages in the endpoint's ordered stream, which the receiver copies into its registered
// memory after checking the range (refusing anything else), and a kPutFlush the receiver answers
// with a kPutAck once it has handled everything before it; that answer completes the puts. UCX
// 1.13's own emulation aborts a receiver whose sender dies mid-transfer (openucx/ucx#7274), and
// needs an acknowledgement per put; ours needs one per PutMany.
//
// Failure: endpoints are created with UCP_ERR_HANDLING_MODE_PEER (unless the options turn peer
// failure detection off), so a vanished peer fails the operations on its endpoint (UCX completes
// them with an error) instead of hanging them; the endpoint is then force-closed and every later
// operation on it fails with the same error. Connect completes a hello/answer handshake first.
//
// Teardown: destroying the transport fails what is still queued here (Cancelled), lets what UCP
// already has finish by closing every endpoint in flush mode (force after kCloseDeadline, when UCP
// cancels the rest), then destroys the worker; the context lives on until the last registration is
// unmapped. Every completion has been called when the destructor returns.
#include "transport/ucx_core.h"

namespace strata::transport {
namespace {

using namespace internal_ucx;  // NOLINT: the core is this file's implementation

class UcxRegistration final : public MemoryRegistration {
 public:
  UcxRegistration(std::shared_ptr<UcxCore> core, ucp_mem_h memh, RemoteRegion region)
      : core_(std::move(core)), memh_(memh), region_(std::move(region)) {}
  ~UcxRegistration() override { core_->Unmap(memh_); }

  RemoteRegion Describe() const override { return region_; }

 private:
  const std::shared_ptr<UcxCore> core_;
  const ucp_mem_h memh_;
  const RemoteRegion region_;
};

// Enforced where puts travel as messages (the receiver applies them); under RMA, a promise.
class UcxGrant final : public Grant {
 public:
  UcxGrant(std::shared_ptr<UcxCore> core, RemoteRegion region) : core_(std::move(core)), region_(std::move(region)) {}
  ~UcxGrant() override { core_->RemoveGrant(region_.key); }
  RemoteRegion Describe() const override { return region_; }
  bool enforced() const override { return core_->message_puts(); }

 private:
  const std::shared_ptr<UcxCore> core_;
  const RemoteRegion region_;
};

class UcxEndpoint final : public Endpoint {
 public:
  UcxEndpoint(std::shared_ptr<UcxCore> core, uint64_t id, std::string peer)
      : core_(std::move(core)), id_(id), peer_(std::move(peer)) {}
  ~UcxEndpoint() override {
    core_->SubmitInternal([core = core_.get(), id = id_] { core->ReleaseEndpoint(id); });
  }

  void Put(const void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset,
           Completion done) override {
    core_->Submit(
        [core = core_.get(), id = id_, span = PutSpan{local, len, remote_offset},
         remote](Completion d) { core->DoPuts(id, absl::MakeConstSpan(&span, 1), remote, std::move(d)); },
        std::move(done));
  }

  void PutMany(absl::Span<const PutSpan> spans, const RemoteRegion& remote,
               Completion done) override {
    core_->Submit(
        [core = core_.get(), id = id_, spans = std::vector<PutSpan>(spans.begin(), spans.end()),
         remote](Completion d) { core->DoPuts(id, spans, remote, std::move(d)); },
        std::move(done));
  }

  void Get(void* local, size_t len, const RemoteRegion& remote, uint64_t remote_offset,
           Completion done) override {
    core_->Submit(
        [core = core_.get(), id = id_, local, len, remote, remote_offset](Completion d) {
          core->DoGet(id, local, len, remote, remote_offset, std::move(d));
        },
        std::move(done));
  }

  void Send(uint16_t id, std::string_view payload, Completion done) override {
    core_->Submit(
        [core = core_.get(), ep = id_, id, payload = std::string(payload)](Completion d) mutable {
          core->DoOrdered(
              ep,
              {.is_flush = false, .id = id, .payload = std::move(payload), .done = std::move(d)});
        },
        std::move(done));
  }

  void Flush(Completion done) override {
    core_->Submit(
        [core = core_.get(), ep = id_](Completion d) {
          core->DoOrdered(ep, {.is_flush = true, .done = std::move(d)});
        },
        std::move(done));
  }

  const std::string& peer() const override { return peer_; }

 private:
  const std::shared_ptr<UcxCore> core_;
  const uint64_t id_;
  const std::string peer_;
};

class UcxTransport final : public Transport {
 public:
  explicit UcxTransport(std::shared_ptr<UcxCore> core) : core_(std::move(core)) {}
  ~UcxTransport() override { core_->Stop(); }

  std::string name() const override { return "ucx"; }
  std::string address() const override { return core_->address(); }

  absl::StatusOr<std::unique_ptr<MemoryRegistration>> Register(void* base, size_t len) override {
    if (base == nullptr || len == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("register: empty region (%p, %d bytes)", base, len));
    }
    return Map(base, len);
  }

  absl::StatusOr<std::unique_ptr<Grant>> GrantAccess(const MemoryRegistration& registration,
                                                     absl::Span<const ByteRange> ranges) override {
    RemoteRegion region = registration.Describe();
    STRATA_ASSIGN_OR_RETURN(region.key, core_->AddGrant(region, ranges));
    return std::make_unique<UcxGrant>(core_, std::move(region));
  }

  absl::StatusOr<std::unique_ptr<MemoryRegistration>> Allocate(size_t len) override {
    if (len == 0) return absl::InvalidArgumentError("allocate: empty region");
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<MemoryRegistration> registration, Map(nullptr, len));
    // UCX may fall back to a heap allocation, which is not zeroed.
    std::memset(reinterpret_cast<void*>(registration->Describe().address), 0, len);
    return registration;
  }

  absl::StatusOr<std::shared_ptr<Endpoint>> Connect(const std::string& peer_address) override {
    STRATA_ASSIGN_OR_RETURN(
        std::string_view worker_address,
        internal::Unframe(FrameKind::kWorkerAddress, peer_address, "peer address"));
    auto name = std::make_shared<const std::string>(
        absl::StrFormat("ucx peer %016x", XXH64(worker_address.data(), worker_address.size(), 0)));
    STRATA_ASSIGN_OR_RETURN(uint64_t id, core_->CreateEndpoint(worker_address, name));
    return std::make_shared<UcxEndpoint>(core_, id, peer_address);
  }

  void SetMessageHandler(uint16_t id, MessageHandler handler) override {
    core_->SetHandler(id, std::move(handler));
  }

 private:
  absl::StatusOr<std::unique_ptr<MemoryRegistration>> Map(void* base, size_t len) {
    ucp_mem_h memh = nullptr;
    std::string key;
    STRATA_RETURN_IF_ERROR(core_->Map(&base, len, &memh, &key));
    return std::make_unique<UcxRegistration>(
        core_, memh,
        RemoteRegion{
            .address = reinterpret_cast<uintptr_t>(base), .length = len, .key = std::move(key)});
  }

  const std::shared_ptr<UcxCore> core_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> MakeUcxTransport(const UcxOptions& options) {
  STRATA_ASSIGN_OR_RETURN(std::shared_ptr<UcxCore> core, UcxCore::Create(options));
  return std::make_unique<UcxTransport>(std::move(core));
}

}  // namespace strata::transport
