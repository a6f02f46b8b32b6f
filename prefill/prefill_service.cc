#include "prefill/prefill_service.h"

#include <memory>

#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_status.h"

namespace strata::prefill {
namespace {

// Finishes once the job reports; a cancelled RPC cancels the job, whose report then finishes it.
class PrefillReactor final : public grpc::ServerUnaryReactor {
 public:
  PrefillReactor(PrefillWorker& worker, grpc::CallbackServerContext* context, const v1::PrefillRequest& request,
                 v1::PrefillReply* reply)
      : worker_(worker), id_(request.request_id()) {
    Job job;
    job.id = request.request_id();
    job.tokens.assign(request.tokens().begin(), request.tokens().end());
    const v1::KvTarget& t = request.target();
    job.target.transport_address = t.transport_address();
    job.target.layout_fingerprint = t.layout_fingerprint();
    job.target.pool = {t.pool().address(), t.pool().length(), t.pool().key()};
    job.target.block_bytes = t.block_bytes();
    job.target.blocks.assign(t.block_ids().begin(), t.block_ids().end());
    job.target.state = {t.state().address(), t.state().length(), t.state().key()};
    job.target.checkpoint = {t.checkpoint().address(), t.checkpoint().length(), t.checkpoint().key()};
    job.cache_namespace = request.cache_namespace();
    job.done = [this, context, reply](absl::StatusOr<PrefillResult> result) {
      // Every put of the job has settled (nothing more will land at the target) unless the worker
      // says otherwise: the decode worker may then reuse the target at once.
      if (result.ok() || !result.status().GetPayload(kUnsettledPayload).has_value()) {
        context->AddTrailingMetadata("strata-prefill-settled", "1");
      }
      if (!result.ok()) {
        Finish(proto::ToGrpc(result.status()));
        return;
      }
      reply->set_tokens(result->tokens);
      reply->set_kv_bytes(result->kv_bytes);
      reply->set_compute_ms(result->compute_ms);
      reply->set_transfer_wait_ms(result->transfer_wait_ms);
      reply->set_cached_tokens(result->cached_tokens);
      reply->set_checkpoint_tokens(result->checkpoint_tokens);
      Finish(grpc::Status::OK);
    };
    absl::Status s = worker_.Submit(std::move(job));
    if (!s.ok()) {
      context->AddTrailingMetadata("strata-prefill-settled", "1");  // nothing was put
      Finish(proto::ToGrpc(s));
    }
  }
  // gRPC runs OnDone after OnCancel has returned, but hands over between the two threads inside
  // libgrpc++, where ThreadSanitizer cannot see it; mu_ makes that order explicit, so the
  // destructor's free of id_ is seen to follow Cancel's read of it.
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    worker_.Cancel(id_);
  }
  void OnDone() override {
    { absl::MutexLock lock(&mu_); }
    delete this;
  }

 private:
  PrefillWorker& worker_;
  const std::string id_;
  absl::Mutex mu_;
};

}  // namespace

grpc::ServerUnaryReactor* PrefillService::Prefill(grpc::CallbackServerContext* context,
                                                  const v1::PrefillRequest* request, v1::PrefillReply* reply) {
  return new PrefillReactor(worker_, context, *request, reply);
}

grpc::ServerUnaryReactor* PrefillService::Status(grpc::CallbackServerContext* context, const v1::WorkerStatusRequest*,
                                                 v1::WorkerStatus* reply) {
  PrefillStats s = worker_.stats();
  reply->set_running_requests(s.running);
  reply->set_queued_requests(s.queued);
  reply->set_free_kv_blocks(s.free_blocks);
  reply->set_total_kv_blocks(s.total_blocks);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace strata::prefill
