// One request through the cluster (internal to router/cluster_upstream.*): its attempts on decode
// workers, each a Decode.Generate stream, and the moves between them when a worker fails.
// cluster_upstream.h describes the behaviour; this is the mechanism.
//
// Lifetime: shared by the caller's handle, the current attempt's stream reader and (weakly) the
// upstream's watchdog. Threads: events come from the current reader (gRPC threads), one at a
// time; a new attempt starts from the old reader's end or from the watchdog; Cancel from anywhere.
// Exactly one final event is delivered; whoever ends the call first claims it under mu_.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "router/cluster_upstream.h"
#include "router/upstream.h"
#include "strata/v1/worker.grpc.pb.h"

namespace strata::router {
class ClusterUpstream;
}

namespace strata::router::internal {

// One Decode.Generate stream of a call.
struct Attempt {
  grpc::ClientContext context;
  v1::DecodeRequest request;
  std::string decode_id, decode_address, prefill_id;
  std::atomic<bool> abandoned{false};  // by the watchdog: no event for inactivity_timeout
  absl::Time last_event;               // under the call's mu_
};

class ClusterCall : public std::enable_shared_from_this<ClusterCall> {
 public:
  ClusterCall(ClusterUpstream& cluster, UpstreamRequest request, std::function<void(UpstreamEvent)> on_event);

  void Begin();   // the first attempt; right after construction
  void Cancel();  // the caller's: ends the call with Cancelled unless it finished first
  // The watchdog's, every tick: abandons a silent attempt; starts an attempt waiting for a worker.
  void Tick(absl::Time now);

  // From the current attempt's reader.
  void OnStreamEvent(Attempt& attempt, const v1::TokenEvent& event);
  void OnStreamEnd(const std::shared_ptr<Attempt>& attempt, const grpc::Status& status);

 private:
  // Starts the next attempt (or waits for a worker, or ends the call).
  void StartAttempt();
  // What a failed attempt means: worth another attempt (true) or the call's end (false). Sets
  // `failure` to the error naming the worker, and suspects or avoids workers as it says.
  bool Classify(const Attempt& attempt, const grpc::Status& status, absl::Status* failure);
  // Delivers the final event, once.
  void End(UpstreamEvent event);

  ClusterUpstream& cluster_;
  const UpstreamRequest request_;
  const std::function<void(UpstreamEvent)> on_event_;
  absl::Time deadline_;

  absl::Mutex mu_;
  std::shared_ptr<Attempt> current_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> streamed_ ABSL_GUARDED_BY(mu_);  // tokens delivered so far
  std::vector<std::string> avoid_ ABSL_GUARDED_BY(mu_);  // decode workers that failed it
  PrefixHits hits_ ABSL_GUARDED_BY(mu_);                 // where its prompt's prefix is cached
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;
  FinishReason finish_ ABSL_GUARDED_BY(mu_) = FinishReason::kNone;
  int64_t cached_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool waiting_ ABSL_GUARDED_BY(mu_) = false;  // for a decode worker to appear
  absl::Time waiting_since_ ABSL_GUARDED_BY(mu_);
  absl::Time last_try_ ABSL_GUARDED_BY(mu_);
  absl::Status last_failure_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::router::internal
