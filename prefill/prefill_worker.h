// The prefill worker's loop: it batches prompt chunks of several requests into each Model::Step
// (short prompts first, every step cut to a time budget so none waits behind a long prompt),
// builds the compressed KV in its own pool, and pushes every layer's finished pages into the
// decode worker's registered blocks (a KvSink: prefill/push_sink.h) as soon as that layer is done
// — while the later layers of the same step still compute. After each step the touched blocks'
// sealed headers follow; after the last one the state slot (window + compressor carry). The job
// completes when every byte has landed: that completion is what tells the decode worker to start.
//
// Prefix reuse: the worker keeps finished full blocks in its pool (engine::PrefixCache, LRU, in
// whatever the running jobs leave free) under keys scoped by the job's cache namespace, with
// boundary checkpoints every `checkpoint_every` blocks and at each prompt's last full block. A job
// whose prompt starts with cached blocks shares them, resumes at the deepest checkpoint and
// computes only the rest; the cached blocks are pushed whole. Steps are cut at checkpoint
// positions so the state there can be taken (the engine is chunk-invariant: the KV and the
// output are the same bits as a cold run).
//
// With a KvSource (the kvstore), a job whose prompt has at least `min_fetch_blocks` full blocks
// past what the local cache holds is first fetched from it — the job waits aside while its
// blocks arrive, the others go on — and what arrives joins the local cache, from which the job
// then resumes. Every job's new full blocks and checkpoints are written back to the source
// afterwards, off the loop.
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
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/kv/block_key.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/kv_source.h"
#include "engine/kv/prefix_cache.h"
#include "engine/model.h"
#include "prefill/push_sink.h"
#include "prefill/step_cost.h"
#include "transport/transport.h"

namespace strata::prefill {

struct PrefillResult {
  int64_t tokens = 0;
  int64_t cached_tokens = 0;    // of them, resumed from the prefix cache (not computed)
  int64_t checkpoint_tokens = 0;  // position of the checkpoint put to the target (0: none)
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
  std::string cache_namespace;  // whose prefix cache it may use (its tenant's)
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
  // Prefix reuse (off: every prompt is computed whole and nothing is kept).
  bool prefix_cache = true;
  engine::PrefixCacheOptions cache;
  int64_t checkpoint_every = 16;  // blocks between boundary checkpoints
  uint64_t model_identity = 0;    // Checkpoint::identity(), for the block keys
  // The kvstore (null: none), which must outlive the worker; used with the prefix cache on.
  engine::KvSource* source = nullptr;
  int64_t min_fetch_blocks = 2;
};

struct PrefillStats {
  int64_t running = 0;
  int64_t queued = 0;
  int64_t queued_tokens = 0;
  int64_t free_blocks = 0;
  int64_t total_blocks = 0;
  uint64_t kv_bytes_sent = 0;
  int64_t tokens_computed = 0;
  engine::PrefixCacheStats prefix;
  int64_t fetches = 0, fetched_blocks = 0;  // from the KvSource
  int64_t written_back_blocks = 0;          // handed to it
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
  // Empties the prefix cache of every block no running job holds.
  void DropPrefixCache();

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
  // Pushes what a newly admitted job resumed from the cache: its shared blocks whole, and the
  // checkpoint (and final state) if it resumed right there.
  void PushResumed(Running& r);
  // After a step that ended at `r`'s position: its checkpoint and final state.
  void TakeStates(Running& r);
  void CacheFinished(Running& r);
  // Sends the front waiting job to the source if its prompt is worth fetching; true if it went.
  bool StartFetch(Job& job, const std::vector<engine::BlockKey>& keys, int64_t local_blocks);
  void FinishFetches(std::vector<std::pair<std::string, absl::StatusOr<int64_t>>> done);
  absl::StatusOr<std::shared_ptr<transport::Endpoint>> EndpointFor(const std::string& address);
  uint8_t* Staging(int32_t slot) {
    return staging_.data() + static_cast<size_t>(slot) * 2 * static_cast<size_t>(pool_.layout().state_bytes());
  }

  engine::Model& model_;
  engine::KvPool& pool_;
  transport::Transport& transport_;
  const PrefillOptions options_;
  std::unique_ptr<transport::MemoryRegistration> pool_registration_;
  // max_running × 2 state records, registered: a job's final state and checkpoint go out from here.
  std::vector<uint8_t> staging_;
  std::unique_ptr<transport::MemoryRegistration> staging_registration_;

  mutable absl::Mutex mu_;
  std::vector<Job> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancels_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, absl::StatusOr<int64_t>>> fetched_ ABSL_GUARDED_BY(mu_);
  int64_t fetches_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool drop_cache_ ABSL_GUARDED_BY(mu_) = false;
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  PrefillStats stats_ ABSL_GUARDED_BY(mu_);

  // Loop thread only.
  std::deque<Job> waiting_;
  std::vector<std::unique_ptr<Running>> running_;
  StepCostModel cost_;
  std::unique_ptr<engine::PrefixCache> cache_;  // null with prefix_cache off
  const engine::KeyScope scope_;
  // Local blocks of jobs that ended with puts still reading them: returned once those settle.
  struct Draining {
    engine::SequenceCache cache;
    int32_t staging_slot;
    std::function<int64_t()> pending;
  };
  std::vector<Draining> draining_;
  // Jobs waiting for their prefix from the source: the job, its keys, the blocks being filled and
  // where the checkpoint lands.
  struct Fetching {
    Job job;
    std::vector<engine::BlockKey> keys;
    std::vector<int32_t> blocks;
    std::vector<uint8_t> checkpoint;
    bool cancelled = false;
  };
  absl::flat_hash_map<std::string, std::unique_ptr<Fetching>> fetching_;
  absl::flat_hash_set<std::string> fetched_jobs_;  // went to the source once: not again
  std::vector<int32_t> free_staging_;
  absl::flat_hash_map<std::string, std::shared_ptr<transport::Endpoint>> endpoints_;
  std::thread thread_;
};

}  // namespace strata::prefill
