// The expert pool's thin gRPC layer: strata.v1.Experts over an ExpertRank (the control plane of
// `strata experts`), and the attention worker's RankHandle that calls it.
#pragma once

#include <memory>
#include <string>

#include "expert_pool/expert_rank.h"
#include "expert_pool/remote_experts.h"
#include "strata/v1/experts.grpc.pb.h"

namespace strata::expert_pool {

class ExpertsService final : public v1::Experts::CallbackService {
 public:
  explicit ExpertsService(ExpertRank& rank) : rank_(rank) {}

  grpc::ServerUnaryReactor* Attach(grpc::CallbackServerContext* c, const v1::ExpertsAttachRequest* r,
                                   v1::ExpertsAttachReply* out) override;
  grpc::ServerUnaryReactor* Detach(grpc::CallbackServerContext* c, const v1::ExpertsDetachRequest* r,
                                   v1::ExpertsDetachReply* out) override;

 private:
  ExpertRank& rank_;
};

// Attaches to the rank `name` serving strata.v1.Experts at `grpc_address` (deadline 10 s each).
RankHandle GrpcRankHandle(const std::string& name, const std::string& grpc_address);

}  // namespace strata::expert_pool
