// The router's Upstream for a disaggregated cluster: it keeps a snapshot of the live prefill and
// decode workers from the registry (refreshed every `refresh`), lets the Policy pick a pair per
// request, and streams the request's tokens from the decode worker's Decode.Generate (which
// drives the prefill worker).
//
// Faults. A worker whose connection fails is kept out of rotation until the registry drops it or
// `suspect_for` passes, so a crashed worker stops getting traffic at once, not when its lease
// lapses. A request survives its workers (cluster_call.cc):
//   - the decode worker dies (the stream breaks with no trailers), hangs (no event, not even its
//     keep-alive, for `inactivity_timeout`; gRPC keepalive catches a silent connection sooner) or
//     turns it away (queue full): the request moves to another decode worker with the prompt
//     plus the tokens already streamed, and the client's stream goes on where it was — for
//     greedy decoding the same tokens an undisturbed run gives (the engine computes a prompt's
//     KV bit for bit the same however it is chunked);
//   - its prefill worker fails (the decode worker names it in the trailers): that worker is
//     suspected and the request is retried with another one, or with none (decode computes the
//     prompt itself);
//   at most `max_attempts` decode attempts in all; then, or on any other error, the request ends
//   with a clean error naming the worker and what failed. Nothing accepted is dropped silently.
// With a policy that uses the prefix index (kv_aware), a request's prompt is first looked up there
// — on a thread of the upstream's own, never on the caller's — for how much of it each worker
// already caches; a full lookup queue, or an index that fails, just routes without that.
// Every call has a deadline (`request_timeout`). While no decode worker is live, Ready() says so
// (the router's /healthz answers 503) and a retry waits up to `worker_wait` for one to appear (a
// supervised worker restarting).
//
// Threading: Start() from any thread; callbacks come on gRPC's threads and the watchdog's.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/thread_pool.h"
#include "registry/prefix_index.h"
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
  // Decode attempts per request, the first included (1: a request never moves).
  int max_attempts = 3;
  // No event from the decode worker (tokens, or its keep-alive every 2 s) for this long: the
  // worker is hung and the attempt is abandoned.
  absl::Duration inactivity_timeout = absl::Seconds(15);
  // Every call's overall deadline.
  absl::Duration request_timeout = absl::Hours(1);
  // A retry finding no decode worker waits this long for one to (re)appear.
  absl::Duration worker_wait = absl::Seconds(20);
};

// For one request: each location's (a worker's registry id) cached tokens of its prompt.
struct PrefixHits {
  absl::flat_hash_map<std::string, int64_t> tokens;
};

struct PrefixLookupStats {
  int64_t lookups = 0;   // index lookups made
  int64_t failures = 0;  // of them, failed (routed without)
  int64_t skipped = 0;   // requests routed without one (the lookup queue was full)
  double seconds = 0;    // spent in lookups (key hashing included)
};

struct ClusterSnapshot {
  std::vector<registry::ServiceRecord> prefill, decode;
};

namespace internal {
class ClusterCall;
}

class ClusterUpstream final : public Upstream {
 public:
  // `prefix_index` (may be null: no lookups) must outlive the upstream.
  ClusterUpstream(registry::Registry& registry, std::unique_ptr<Policy> policy,
                  const ClusterOptions& options, Clock& clock = Clock::Real(),
                  registry::PrefixIndex* prefix_index = nullptr);
  ~ClusterUpstream() override;  // every call must have ended (the fronts wait for that)

  // Reads the registry once (the background refresher calls it every `refresh`).
  absl::Status Refresh();
  ClusterSnapshot snapshot() const;

  std::unique_ptr<UpstreamCall> Start(UpstreamRequest request,
                                      std::function<void(UpstreamEvent)> on_event) override;
  absl::Status Ready() const override;

  // A connection to this worker failed: keep it out of rotation for a while.
  void Suspect(const std::string& id);

  // ---- for the calls (cluster_call.cc) ----
  struct Route {
    registry::ServiceRecord decode;
    std::optional<registry::ServiceRecord> prefill;
  };
  // The workers for one attempt of a `prompt_tokens` request, leaving out the decode workers in
  // `avoid` (ones that already failed it). Unavailable when there is none.
  absl::StatusOr<Route> Choose(int64_t prompt_tokens, int64_t max_tokens,
                               const std::vector<std::string>& avoid, const PrefixHits& hits = {});
  // Whether calls look their prompt up first (LookupPrefix) .
  bool wants_prefix() const { return prefix_index_ != nullptr && policy_->uses_prefix_index(); }
  // Looks `request`'s prompt up in the prefix index on the lookup thread and calls `done` there
  // (at once, with no hits, when the lookup queue is full).
  void LookupPrefix(const UpstreamRequest& request, std::function<void(PrefixHits)> done);
  PrefixLookupStats prefix_stats() const;
  // One channel per worker process (registry id): a worker restarted on the same address gets a
  // fresh connection rather than the dead one's, which may be waiting out a reconnect backoff.
  std::shared_ptr<strata::v1::Decode::Stub> DecodeStub(const std::string& id, const std::string& address);
  const ClusterOptions& options() const { return options_; }
  Clock& clock() { return clock_; }
  void Forget(internal::ClusterCall* call);  // its final event was delivered

 private:
  void Watch();  // the watchdog: inactivity, and retries waiting for a worker

  registry::Registry& registry_;
  std::unique_ptr<Policy> policy_;
  const ClusterOptions options_;
  Clock& clock_;

  mutable absl::Mutex mu_;
  ClusterSnapshot snapshot_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> sent_since_refresh_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> tokens_since_refresh_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> suspects_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<strata::v1::Decode::Stub>> stubs_
      ABSL_GUARDED_BY(mu_);

  absl::Mutex calls_mu_;
  absl::flat_hash_map<internal::ClusterCall*, std::weak_ptr<internal::ClusterCall>> calls_
      ABSL_GUARDED_BY(calls_mu_);

  registry::PrefixIndex* const prefix_index_;
  mutable absl::Mutex stats_mu_;
  PrefixLookupStats prefix_stats_ ABSL_GUARDED_BY(stats_mu_);

  absl::Notification stop_;
  std::thread refresher_, watchdog_;
  // Last: destroyed (its queued lookups run) before anything they use.
  ThreadPool lookups_{2, 256};
};

}  // namespace strata::router
