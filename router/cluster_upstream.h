// The router's Upstream for a disaggregated cluster: it keeps a snapshot of the live prefill and
// decode workers from the registry (refreshed every `refresh`), lets the Policy pick a pair per
// request, and streams the request's tokens from the decode worker's Decode.Generate (which
// drives the prefill worker). A worker whose connection fails is kept out of rotation until the
// registry drops it or `suspect_for` passes, so a crashed decode worker stops getting traffic at
// once, not only when its lease lapses.
//
// Threading: Start() from any thread; callbacks come on gRPC's threads.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "registry/registry.h"
#include "router/policy.h"
#include "router/upstream.h"
#include "strata/v1/worker.grpc.pb.h"

namespace strata::router {

struct ClusterOptions {
  std::string model;  // the registry's model field must match
  absl::Duration refresh = absl::Milliseconds(500);
  absl::Duration suspect_for = absl::Seconds(10);
  int64_t block_tokens = 128;  // for the policy's block estimate
};

struct ClusterSnapshot {
  std::vector<registry::ServiceRecord> prefill, decode;
};

class ClusterUpstream final : public Upstream {
 public:
  ClusterUpstream(registry::Registry& registry, std::unique_ptr<Policy> policy,
                  const ClusterOptions& options, Clock& clock = Clock::Real());
  ~ClusterUpstream() override;

  // Reads the registry once (the background refresher calls it every `refresh`).
  absl::Status Refresh();
  ClusterSnapshot snapshot() const;

  std::unique_ptr<UpstreamCall> Start(UpstreamRequest request,
                                      std::function<void(UpstreamEvent)> on_event) override;

  // A connection to this worker failed: keep it out of rotation for a while.
  void Suspect(const std::string& id);

 private:
  std::shared_ptr<strata::v1::Decode::Stub> DecodeStub(const std::string& address);

  registry::Registry& registry_;
  std::unique_ptr<Policy> policy_;
  const ClusterOptions options_;
  Clock& clock_;

  mutable absl::Mutex mu_;
  ClusterSnapshot snapshot_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> sent_since_refresh_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> suspects_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<strata::v1::Decode::Stub>> stubs_
      ABSL_GUARDED_BY(mu_);

  absl::Notification stop_;
  std::thread refresher_;
};

}  // namespace strata::router
