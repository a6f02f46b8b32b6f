#include "expert_pool/experts_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc_options.h"
#include "proto/grpc_status.h"
#include "proto/unary.h"

namespace strata::expert_pool {

grpc::ServerUnaryReactor* ExpertsService::Attach(grpc::CallbackServerContext* c, const v1::ExpertsAttachRequest* r,
                                                 v1::ExpertsAttachReply* out) {
  AttachRequest q{.client_address = r->client_address(),
                  .combine = {r->combine().address(), r->combine().length(), r->combine().key()},
                  .rank_index = r->rank_index(),
                  .max_rows = r->max_rows()};
  absl::StatusOr<RankAttachment> a = rank_.Attach(q);
  if (!a.ok()) return proto::Answer(c, absl::StatusOr<v1::ExpertsAttachReply>(a.status()), out);
  v1::ExpertsAttachReply reply;
  reply.set_client(a->client);
  reply.set_address(a->address);
  reply.mutable_dispatch()->set_address(a->dispatch.address);
  reply.mutable_dispatch()->set_length(a->dispatch.length);
  reply.mutable_dispatch()->set_key(a->dispatch.key);
  for (const std::vector<int32_t>& layer : a->experts) {
    reply.add_layers()->mutable_experts()->Assign(layer.begin(), layer.end());
  }
  return proto::Answer(c, absl::StatusOr<v1::ExpertsAttachReply>(std::move(reply)), out);
}

grpc::ServerUnaryReactor* ExpertsService::Detach(grpc::CallbackServerContext* c, const v1::ExpertsDetachRequest* r,
                                                 v1::ExpertsDetachReply* out) {
  rank_.Detach(r->client());
  return proto::Answer(c, absl::StatusOr<v1::ExpertsDetachReply>(v1::ExpertsDetachReply()), out);
}

RankHandle GrpcRankHandle(const std::string& name, const std::string& grpc_address) {
  std::shared_ptr<v1::Experts::Stub> stub = v1::Experts::NewStub(proto::InternalChannel(grpc_address));
  RankHandle h;
  h.name = name;
  h.attach = [stub, name, grpc_address](const AttachRequest& q) -> absl::StatusOr<RankAttachment> {
    v1::ExpertsAttachRequest r;
    r.set_client_address(q.client_address);
    r.mutable_combine()->set_address(q.combine.address);
    r.mutable_combine()->set_length(q.combine.length);
    r.mutable_combine()->set_key(q.combine.key);
    r.set_rank_index(q.rank_index);
    r.set_max_rows(q.max_rows);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExpertsAttachReply reply;
    const grpc::Status s = stub->Attach(&context, r, &reply);
    if (!s.ok()) return Annotate(proto::FromGrpc(s), absl::StrCat("expert rank ", name, " at ", grpc_address));
    RankAttachment a;
    a.client = reply.client();
    a.address = reply.address();
    a.dispatch = {reply.dispatch().address(), reply.dispatch().length(), reply.dispatch().key()};
    for (const v1::ExpertsLayer& l : reply.layers()) a.experts.emplace_back(l.experts().begin(), l.experts().end());
    return a;
  };
  h.detach = [stub](uint64_t client) {
    v1::ExpertsDetachRequest r;
    r.set_client(client);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::ExpertsDetachReply reply;
    (void)stub->Detach(&context, r, &reply);  // best effort: a rank that is gone has nothing to free
  };
  return h;
}

}  // namespace strata::expert_pool
