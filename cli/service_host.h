// What every long-running service command (`strata router|prefill|decode|serve`) shares: shutdown
// on SIGINT/SIGTERM, the /metrics + /healthz HTTP surface, the gRPC server and the registry lease.
//
// Threading: BlockShutdownSignals() must run in main() before any thread starts (threads inherit
// the mask, so only WaitForShutdownSignal() ever sees the signals); the rest is thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cli/cluster_config.h"
#include "common/http_server.h"
#include "decode/scheduler.h"
#include "engine/runtime.h"
#include "engine/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/registry.h"
#include "registry/prefix_index.h"
#include "registry/registry.h"

namespace strata::cli {

void BlockShutdownSignals();
// Returns the signal that arrived (SIGINT or SIGTERM).
int WaitForShutdownSignal();

// Prometheus text for the registry.
std::string RenderMetrics(prometheus::Registry& registry);

// /metrics (after `refresh` updates the gauges) and /healthz on host:port; with `drop_caches`,
// also POST /admin/drop-caches (empties the service's prefix caches: an operator's flush, and how
// `strata bench prefix` reaches the kvstore's tiers). The port is the cluster's inside, like the
// gRPC ones.
absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(const std::string& host, int port,
                                                               std::shared_ptr<prometheus::Registry> metrics,
                                                               std::function<void()> refresh,
                                                               std::function<void()> drop_caches = nullptr);

// A gRPC server on `address` with `services`; fails with the address when it cannot bind.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& address,
                                                              const std::vector<grpc::Service*>& services);

// The cluster's registry: Redis at `redis` (host:port), keys under `cluster`.
absl::StatusOr<std::unique_ptr<registry::Registry>> ConnectRegistry(const std::string& redis, const std::string& cluster);
// The cluster's prefix index, in the same Redis.
absl::StatusOr<std::unique_ptr<registry::PrefixIndex>> ConnectPrefixIndex(const ClusterConfig& config);

// The decode scheduler's settings from the cluster file (a decode worker's, or the colocated
// server's), for the model and tokenizer the process loaded.
// `on_change` (may be empty) hears of the prefix cache's keys coming and going (a publisher).
decode::SchedulerOptions DecodeSchedulerOptions(
    const ClusterConfig& config, const engine::Runtime& runtime, const engine::Tokenizer& tokenizer,
    std::function<void(absl::Span<const engine::BlockKey>, bool)> on_change = nullptr);

// A unique registry id for this process: "<name>-<pid>".
std::string ServiceId(const std::string& name);

// The lease every service holds; the router drops a service within about this long of its death.
inline constexpr absl::Duration kServiceLease = absl::Seconds(3);

}  // namespace strata::cli
