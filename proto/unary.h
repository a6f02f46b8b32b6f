// Finishing a callback unary RPC from an absl::StatusOr of its reply, for the services whose
// handlers compute the answer at once.
#pragma once

#include <utility>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "proto/grpc_status.h"

namespace strata::proto {

template <typename Reply>
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* c, absl::StatusOr<Reply> r, Reply* out) {
  auto* reactor = c->DefaultReactor();
  if (!r.ok()) {
    reactor->Finish(ToGrpc(r.status()));
  } else {
    *out = *std::move(r);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

}  // namespace strata::proto
