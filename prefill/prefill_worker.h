// The prefill worker's loop: it batches prompt chunks of several requests into each Model::Step
// (short prompts first, every step cut to a time budget so none waits behind a long prompt),
// builds the compressed KV in its own pool, and pushes every layer's finished pages into the
// decode worker's registered blocks as soon as that layer is done — while the later layers of the
// same step still compute. After each step the touched blocks' sealed headers follow; after the
// last one the state slot (window + compressor carry). The job completes when every byte has
// landed: that completion is what tells the decode worker to start.
//
// Threading: Submit/Cancel/stats from any thread; one internal thread runs the loop and calls
// `done` (which must not block).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/kv/kv_cache.h"
#include "engine/model.h"
#include "prefill/step_cost.h"
#include "transport/transport.h"

namespace strata::prefill {

// Where a request's KV goes: a decode worker's registered pool and one of its state slots.
struct KvTarget {
  std::string transport_address;
  uint64_t layout_fingerprint = 0;
  transport::RemoteRegion pool;
  uint64_t block_bytes = 0;
  std::vector<int32_t> blocks;   // remote block ids in token order
  transport::RemoteRegion state; // exactly one state record
};

struct PrefillResult {
  int64_t tokens = 0;
  uint64_t kv_bytes = 0;
  double compute_ms = 0;        // time in Model::Step for this job's steps
  // Time spent waiting for pushes after compute (every chunk's tail, the last one included): the
  // exposed part of the hand-off, which the layer-by-layer overlap did not hide.
  double transfer_wait_ms = 0;
};

// On a job's error status: the job ended with puts of it still in flight (its pushes timed out),
// so its target may yet be written. A job without it ended after every put it issued settled.
inline constexpr absl::string_view kUnsettledPayload = "strata.dev/prefill-unsettled";

struct Job {
  std::string id;
  std::vector<int32_t> tokens;  // computed from position 0
  KvTarget target;
  std::function<void(absl::StatusOr<PrefillResult>)> done;
};

struct PrefillOptions {
  int64_t chunk_tokens = 512;  // tokens per step over all jobs
  int64_t max_running = 8;     // jobs holding local blocks at once
  int64_t max_queue = 256;     // jobs waiting; more are refused
  // Each step is cut to about this long (StepCostModel): a job deep in a long prompt gets fewer
  // tokens per step, so the others sharing the worker — and a cancellation — wait at most about
  // one such step. 0: chunk_tokens alone bounds a step.
  double step_target_ms = 250;
};

struct PrefillStats {
  int64_t running = 0;
  int64_t queued = 0;
  int64_t queued_tokens = 0;
  int64_t free_blocks = 0;
  int64_t total_blocks = 0;
  uint64_t kv_bytes_sent = 0;
  int64_t tokens_computed = 0;
};

class PrefillWorker {
 public:
  // `pool` must be this worker's own pool; its memory is registered with `transport` here.
  static absl::StatusOr<std::unique_ptr<PrefillWorker>> Create(engine::Model& model, engine::KvPool& pool,
                                                               transport::Transport& transport,
                                                               const PrefillOptions& options);
  ~PrefillWorker();  // fails what is queued or running with Unavailable, then joins

  // InvalidArgument when the job can never run (layout mismatch, too few target blocks, too long
  // for the local pool), ResourceExhausted when the queue is full.
  absl::Status Submit(Job job);
  void Cancel(const std::string& id);
  PrefillStats stats() const;

 private:
  struct Running;
  PrefillWorker(engine::Model& model, engine::KvPool& pool, transport::Transport& transport, const PrefillOptions& options);

  void Loop();
  void Admit();
  void RunStep();
  void Complete(Running& r, absl::Status status);
  // This step's chunk of each running job: shortest remaining first (a job passed over last step
  // before all), within chunk_tokens and the step's time budget.
  void PlanStep();
  void ReapDrained();
  absl::StatusOr<std::shared_ptr<transport::Endpoint>> EndpointFor(const std::string& address);

  engine::Model& model_;
  engine::KvPool& pool_;
  transport::Transport& transport_;
  const PrefillOptions options_;
  std::unique_ptr<transport::MemoryRegistration> pool_registration_;
  std::vector<uint8_t> staging_;  // max_running state slots, registered: the state goes out from here
  std::unique_ptr<transport::MemoryRegistration> staging_registration_;

  mutable absl::Mutex mu_;
  std::vector<Job> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancels_ ABSL_GUARDED_BY(mu_);
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  PrefillStats stats_ ABSL_GUARDED_BY(mu_);

  // Loop thread only.
  std::deque<Job> waiting_;
  std::vector<std::unique_ptr<Running>> running_;
  StepCostModel cost_;
  // Local blocks of jobs that ended with puts still reading them: returned once those settle.
  struct Draining {
    engine::SequenceCache cache;
    int32_t staging_slot;
    std::function<int64_t()> pending;
  };
  std::vector<Draining> draining_;
  std::vector<int32_t> free_staging_;
  absl::flat_hash_map<std::string, std::shared_ptr<transport::Endpoint>> endpoints_;
  std::thread thread_;
};

}  // namespace strata::prefill
