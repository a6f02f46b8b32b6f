// strata.v1.Decode over gRPC: the thin layer between the router's token streams and the
// Scheduler. For a request routed with a prefill worker, it reserves blocks through the
// scheduler, then asks that prefill worker (strata.v1.Prefill) to fill them over the transport,
// lending it exactly those blocks and one landing state slot (transport::Grant).
//
// Cancellation and faults: a router that cancels the stream cancels the request in the scheduler
// and the prefill call. However the prefill call ends — done, failed, cancelled here, its worker
// dead or hung — the grants are revoked before the scheduler may reuse the blocks, so a late put
// of that transfer can never land in another request's blocks. Where the transport cannot enforce
// a revocation (one-sided RMA) and the prefill worker did not answer that it has settled, the
// blocks are quarantined instead (SchedulerOptions::quarantine).
//
// Threading: gRPC's callback threads call in; all methods are thread-safe.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "decode/scheduler.h"
#include "strata/v1/worker.grpc.pb.h"
#include "transport/transport.h"

namespace strata::decode {

struct DecodeServiceOptions {
  absl::Duration prefill_timeout = absl::Minutes(30);  // a 1M-token prompt on CPU takes long
  // A stream with nothing to send for this long gets an empty TokenEvent, so the router can tell
  // a quiet stream (queued, prefilling) from a hung worker by an inactivity timeout.
  absl::Duration heartbeat = absl::Seconds(2);
};

namespace internal {
// A live Generate stream, as the heartbeat thread sees it (decode_service.cc).
class Stream {
 public:
  virtual void Heartbeat(absl::Time now) = 0;
  virtual void Ref() = 0;
  virtual void Unref() = 0;

 protected:
  ~Stream() = default;
};
}  // namespace internal

class DecodeService final : public strata::v1::Decode::CallbackService {
 public:
  // Registers the scheduler's pool and landing slots with `transport`.
  static absl::StatusOr<std::unique_ptr<DecodeService>> Create(Scheduler& scheduler, engine::KvPool& pool,
                                                              transport::Transport& transport,
                                                              const DecodeServiceOptions& options);
  ~DecodeService() override;

  grpc::ServerWriteReactor<strata::v1::TokenEvent>* Generate(grpc::CallbackServerContext* context,
                                                             const strata::v1::DecodeRequest* request) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context, const strata::v1::WorkerStatusRequest* request,
                                   strata::v1::WorkerStatus* reply) override;

  // The prefill stub for `address` (channels are cached and shared).
  std::shared_ptr<strata::v1::Prefill::Stub> PrefillStub(const std::string& address);
  // Where prefill writes `admission`'s blocks and state: grants of exactly those blocks and that
  // state slot (revoked by destroying them), described in `target`.
  absl::Status GrantTarget(const Admission& admission, strata::v1::KvTarget* target,
                           std::unique_ptr<transport::Grant>* pool_grant,
                           std::unique_ptr<transport::Grant>* state_grant);

  Scheduler& scheduler() { return scheduler_; }
  const DecodeServiceOptions& options() const { return options_; }

  // Streams register while they live, for the heartbeat thread.
  void Register(internal::Stream* stream);
  void Unregister(internal::Stream* stream);

 private:
  DecodeService(Scheduler& scheduler, engine::KvPool& pool, transport::Transport& transport,
                const DecodeServiceOptions& options)
      : scheduler_(scheduler), pool_(pool), transport_(transport), options_(options) {}

  Scheduler& scheduler_;
  engine::KvPool& pool_;
  transport::Transport& transport_;
  const DecodeServiceOptions options_;
  std::unique_ptr<transport::MemoryRegistration> pool_registration_, landing_registration_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<strata::v1::Prefill::Stub>> stubs_ ABSL_GUARDED_BY(mu_);

  void HeartbeatLoop();
  absl::Mutex live_mu_;
  absl::flat_hash_set<internal::Stream*> live_ ABSL_GUARDED_BY(live_mu_);
  absl::Notification stop_;
  std::thread heartbeat_thread_;
};

}  // namespace strata::decode
