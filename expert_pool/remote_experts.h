// engine::ExpertExecutor over the expert pool (DESIGN.md §4): the attention worker keeps the gate,
// the routing and the shared expert; each routed (token, expert) pair goes to a rank holding the
// expert, and the pairs' results come back and are summed here per token in increasing expert id,
// exactly as LocalExperts sums them, so the logits are the same bits.
//
// One Run sends each rank its pairs in `waves` groups of its experts (each a put into the rank's
// dispatch region and a message; wire.h), then waits for every wave's answer, which the rank puts
// into this worker's combine region. A Run of more tokens than `max_rows` goes as several.
//
// Failure: a rank that answers with an error fails the Run with it; one that does not answer
// within `timeout` (dead, hung, partitioned) or cannot be reached fails it with Unavailable naming
// the rank, loses its access to the combine region and is avoided from then on wherever another
// rank holds the same experts (its replicas); a Run that needs an expert no live rank holds fails
// at once, naming it. A failed Run still waits (up to the timeout) for the answers the other
// ranks owe it, so no late result lands in the next Run's.
//
// Threading: Run() from one thread at a time (the step loop); answers arrive on the transport's
// progress thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/experts.h"
#include "engine/model_config.h"
#include "expert_pool/expert_rank.h"
#include "transport/transport.h"

namespace strata::expert_pool {

// How this worker reaches one rank's control: Attach through gRPC in a cluster, a direct call to
// an in-process ExpertRank in tests.
struct RankHandle {
  std::string name;  // for errors and logs ("experts-1")
  std::function<absl::StatusOr<RankAttachment>(const AttachRequest&)> attach;
  std::function<void(uint64_t client)> detach;  // optional: frees the rank's buffers for us
};

struct RemoteExpertsOptions {
  int waves = 2;                         // per rank and layer; 1 sends everything at once
  int64_t max_rows = 512;                // tokens per round trip
  absl::Duration timeout = absl::Seconds(10);  // for a Run's answers
};

struct RemoteExpertsStats {
  int64_t runs = 0, pairs = 0, bytes_sent = 0, bytes_received = 0, failures = 0;
  double seconds = 0;
};

class RemoteExperts : public engine::ExpertExecutor {
 public:
  // Attaches to every rank. Every expert of every layer must have a home among them.
  static absl::StatusOr<std::unique_ptr<RemoteExperts>> Create(const engine::ModelConfig& config,
                                                               transport::Transport& transport,
                                                               std::vector<RankHandle> ranks,
                                                               const RemoteExpertsOptions& options = {});
  ~RemoteExperts() override;

  absl::Status Run(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids, const float* weights,
                   int64_t k, float* out) override;

  RemoteExpertsStats stats() const;

 private:
  struct Rank {
    RankHandle handle;
    RankAttachment attachment;
    std::shared_ptr<transport::Endpoint> ep;
    // Its access to the combine region: revoked when it fails, so a rank that wakes up late
    // cannot put into a later Run's results (where the transport enforces grants).
    std::unique_ptr<transport::Grant> grant;
    bool failed = false;  // stopped answering: avoided where a replica exists
  };

  RemoteExperts(const engine::ModelConfig& config, transport::Transport& transport,
                const RemoteExpertsOptions& options);
  absl::Status RunChunk(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids, const float* weights,
                        int64_t k, float* out);
  void OnCombine(std::string_view payload);

  const engine::ModelConfig config_;
  transport::Transport& transport_;
  const RemoteExpertsOptions options_;
  const int64_t d_, part_bytes_;
  std::vector<Rank> ranks_;
  std::vector<std::vector<std::vector<int32_t>>> homes_;  // [layer][expert] → rank indices
  std::unique_ptr<transport::MemoryRegistration> staging_;  // rank r's waves at r · part_bytes_
  std::unique_ptr<transport::MemoryRegistration> combine_;  // results, [max_rows · k, d] BF16
  uint64_t seq_ = 0;

  mutable absl::Mutex mu_;
  absl::CondVar answered_;
  uint64_t waiting_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int64_t> rank_answers_ ABSL_GUARDED_BY(mu_);  // answers of the Run, per rank
  std::vector<bool> unreachable_ ABSL_GUARDED_BY(mu_);     // a put or send to it failed
  absl::Status answer_error_ ABSL_GUARDED_BY(mu_);
  RemoteExpertsStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::expert_pool
