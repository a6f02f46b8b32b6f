// strata.v1.Prefill over gRPC: translates a PrefillRequest into a PrefillWorker job and answers
// once every byte of the request's KV has landed in the decode worker (or the job failed). A
// caller that cancels (the decode worker, when its client went away) cancels the job.
//
// Threading: gRPC's callback threads call in; thread-safe.
#pragma once

#include "prefill/prefill_worker.h"
#include "strata/v1/worker.grpc.pb.h"

namespace strata::prefill {

class PrefillService final : public strata::v1::Prefill::CallbackService {
 public:
  explicit PrefillService(PrefillWorker& worker) : worker_(worker) {}

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context, const strata::v1::PrefillRequest* request,
                                    strata::v1::PrefillReply* reply) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context, const strata::v1::WorkerStatusRequest* request,
                                   strata::v1::WorkerStatus* reply) override;

 private:
  PrefillWorker& worker_;
};

}  // namespace strata::prefill
