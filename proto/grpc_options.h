// gRPC settings every channel and server between Strata's own services uses. Keepalive pings
// every 2 s, failed after 3 s without an answer: a peer that stops answering HTTP/2 (hung,
// SIGSTOPped, its host gone — the kernel may still ACK its TCP) fails the calls in flight to it
// within ~5 s instead of leaving them hanging, however long a legitimate call runs (a prefill of
// a 1M-token prompt takes minutes on a CPU). Servers accept such pings (gRPC's default answers
// pings more often than every 5 minutes with GOAWAY "too_many_pings").
#pragma once

#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"

namespace strata::proto {

constexpr int kKeepaliveTimeMs = 2000;
constexpr int kKeepaliveTimeoutMs = 3000;
constexpr int kMaxMessageBytes = 256 << 20;  // a 1M-token prompt's ids, with room

inline std::shared_ptr<grpc::Channel> InternalChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // A peer that restarts on the same port is back within a second, not after gRPC's default
  // reconnect backoff (up to 2 minutes) fails every call to it meanwhile.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

inline void ConfigureInternalServer(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, kKeepaliveTimeMs / 2);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
}

}  // namespace strata::proto
