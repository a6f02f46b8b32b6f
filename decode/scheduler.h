// The decode worker's continuous-batching loop. Requests wait in a bounded queue until the KV
// blocks for their whole length (prompt + max_tokens) fit, are admitted, and then run one
// Model::Step per iteration together with every other running request — each at its own
// position, decode tokens and (colocated) prefill chunks mixed in one step.
//
// A request whose prompt KV is computed elsewhere (a prefill worker) declares
// `remote_prefill_tokens`: on admission the scheduler reserves its blocks and a landing slot for
// its state, reports them through `on_admitted`, and waits for Landed(). It then verifies every
// landed record (checksums, layout) before the request runs. Decode always computes the prompt's
// last token itself, so all sampling happens here, with one sampler per request.
//
// Prefix reuse: the scheduler keeps the full blocks of every request that ran (prompt and
// generated tokens) in its pool (engine::PrefixCache, in whatever running requests leave free),
// with a checkpoint at the last full block it reached (and every `checkpoint_every` blocks), under
// keys scoped by the request's cache namespace. A request whose prompt starts with cached blocks
// — the next turn of a conversation, another question about a document — shares them and
// computes the rest here, without a remote prefill, when the rest is at most
// `local_prefill_limit` tokens (a remotely prefilled request lands the checkpoint at its
// prompt's last full block too, so its next turn can).
//
// Threading: Submit/Cancel/Landed/stats may be called from any thread. One internal thread runs
// the loop and calls the callbacks; callbacks must not block and must not call back into the
// scheduler synchronously except Cancel/Landed (which only queue).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/kv/block_key.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/prefix_cache.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace strata::decode {

struct SchedulerOptions {
  int64_t max_batch = 32;      // requests admitted at once (running or landing)
  int64_t max_queue = 256;     // requests waiting for admission; more are refused
  int64_t chunk_tokens = 512;  // prompt tokens computed per step (colocated prefill)
  int32_t eos_id = -1;
  int64_t num_tokens = 0;      // tokenizer vocabulary (sampling never picks ids past it)
  // How long the blocks and state slot of a request whose transfer could not be fenced (see
  // Landed) stay out of use before they are reused anyway.
  absl::Duration quarantine = absl::Minutes(5);
  // Prefix reuse (off: nothing is kept).
  bool prefix_cache = true;
  engine::PrefixCacheOptions cache;
  int64_t checkpoint_every = 16;
  uint64_t model_identity = 0;  // Checkpoint::identity(), for the block keys
  // A request meant for remote prefill is computed here instead when its prompt, past what this
  // worker has cached, is at most this long.
  int64_t local_prefill_limit = 2048;
};

struct Request {
  std::string id;
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  engine::SamplingParams sampling;
  bool ignore_eos = false;
  bool logprobs = false;
  // Prompt tokens [0, remote_prefill_tokens) are computed by someone else and land in the
  // reserved blocks; 0 = compute the whole prompt here. At most prompt.size() − 1.
  int64_t remote_prefill_tokens = 0;
  std::string cache_namespace;  // whose prefix cache it may use (its tenant's)
};

enum class Finish { kNone, kStop, kLength };

struct Event {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  bool done = false;
  Finish finish = Finish::kNone;
  absl::Status status;  // with done: OK, Cancelled, or what failed
  int64_t cached_tokens = 0;  // with done: prompt tokens whose KV was reused, not computed
};

struct Admission {
  std::vector<int32_t> blocks;  // block ids covering the prompt (and the generation after it)
  int32_t landing_slot = -1;
  // Byte offsets into landing_memory(): where the state record goes, and the checkpoint at the
  // prompt's last full block.
  int64_t state_offset = 0, checkpoint_offset = 0;
};

// How a remote prefill ended (Scheduler::Landed).
struct Landing {
  absl::Status status;  // OK: the request's blocks and state landed
  // What the prefill worker spent waiting for its pushes (PrefillReply).
  double transfer_wait_ms = 0;
  // No put of that transfer can land any more (its grants were revoked where the transport
  // enforces them, or the prefill worker said it has settled). When false, the request's blocks
  // and state slot are quarantined for `quarantine` instead of being reused at once, since a
  // cancelled, hung or dead sender may still have puts on their way.
  bool fenced = true;
  int64_t cached_tokens = 0;      // prompt tokens the prefill worker resumed from its cache
  int64_t checkpoint_tokens = 0;  // position of the checkpoint it put (0: none)
};

struct Callbacks {
  std::function<void(const Admission&)> on_admitted;  // only for remote prefill
  std::function<void(Event)> on_event;                 // tokens; the last one has done = true
};

struct SchedulerStats {
  int64_t running = 0;       // admitted (landing or running)
  int64_t queued = 0;        // waiting for admission
  int64_t queued_tokens = 0;
  int64_t free_blocks = 0;
  int64_t total_blocks = 0;
  int64_t steps = 0;
  int64_t generated_tokens = 0;
  // KV hand-offs completed and their exposed time: the prefill worker's wait for its pushes plus
  // this worker's verification of the landed records.
  int64_t handoffs = 0;
  double handoff_seconds = 0;
  engine::PrefixCacheStats prefix;
  int64_t local_resumes = 0;  // requests computed here from a cached prefix, not prefilled remotely
};

class Scheduler {
 public:
  Scheduler(engine::Model& model, engine::KvPool& pool, const SchedulerOptions& options);
  ~Scheduler();  // fails what is queued or running with Unavailable, then joins

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // InvalidArgument for a request that can never run (empty prompt, too long for the model or the
  // pool), ResourceExhausted when the queue is full. On OK, callbacks will be called.
  absl::Status Submit(Request request, Callbacks callbacks);
  // Ends the request with Cancelled (a landing request once its transfer has settled).
  void Cancel(const std::string& id);
  // The remote prefill of `id` finished (OK: its blocks and state landed) or failed.
  void Landed(const std::string& id, Landing landing);
  void Landed(const std::string& id, absl::Status status, double transfer_wait_ms = 0, bool fenced = true) {
    Landed(id, Landing{.status = std::move(status), .transfer_wait_ms = transfer_wait_ms, .fenced = fenced});
  }

  SchedulerStats stats() const;
  // Empties the prefix cache of every block no running request holds (an operator's flush, and
  // how `strata bench prefix` measures the kvstore's tiers).
  void DropPrefixCache();
  // State landing slots, for registering with a transport: max_batch slots of state_bytes for the
  // final states, then max_batch more for the checkpoints.
  uint8_t* landing_memory() { return landing_.data(); }
  size_t landing_bytes() const { return landing_.size(); }
  int64_t state_bytes() const { return pool_.layout().state_bytes(); }

 private:
  enum class Phase { kQueued, kLanding, kRunning };
  struct Sequence {
    Request request;
    Callbacks callbacks;
    Phase phase = Phase::kQueued;
    engine::SequenceCache cache;
    std::unique_ptr<engine::Sampler> sampler;
    int32_t landing_slot = -1;
    int64_t generated = 0;
    int32_t next_token = -1;  // sampled, not yet fed
    std::vector<int32_t> generated_tokens;
    bool cancelled = false;
    Landing landed;           // set by Landed()
    bool has_landed = false;
    bool cacheable = false;   // its blocks hold valid KV up to cache.position
    int64_t cached_tokens = 0;
    engine::CheckpointPlan plan;
    // Checkpoints taken (position, state): periodic ones, and the latest block end reached.
    std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints;
    std::pair<int64_t, std::vector<uint8_t>> latest;
  };
  struct Inbox {
    std::vector<std::unique_ptr<Sequence>> submitted;
    std::vector<std::string> cancelled;
    std::vector<std::pair<std::string, Landing>> landed;
    bool drop_cache = false;
  };

  void Loop();
  void Drain(Inbox& inbox);
  void Admit();
  void SettleLandings();
  absl::Status VerifyLanded(Sequence& s);
  void RunStep();
  void End(Sequence& s, Finish finish, absl::Status status);
  int64_t BlocksNeeded(const Request& r) const;
  void ReleaseQuarantined(bool all);
  // Admits `s` from its cached prefix, if the cache has one worth using; false otherwise (then
  // nothing changed).
  bool AdmitFromCache(Sequence& s);
  // After a step: the checkpoint at a block end `s` has just reached.
  void TakeCheckpoint(Sequence& s);
  void CacheFinished(Sequence& s);
  int64_t AvailableBlocks() const;  // free, plus what the prefix cache can give back

  engine::Model& model_;
  engine::KvPool& pool_;
  const SchedulerOptions options_;
  std::vector<uint8_t> landing_;
  std::vector<int32_t> free_slots_;  // loop thread only

  mutable absl::Mutex mu_;
  Inbox inbox_ ABSL_GUARDED_BY(mu_);
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;  // submitted, not yet admitted
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  SchedulerStats stats_ ABSL_GUARDED_BY(mu_);

  // Loop thread only.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> admitted_;
  struct Quarantined {
    engine::SequenceCache cache;
    int32_t landing_slot;
    absl::Time until;
  };
  std::vector<Quarantined> quarantined_;
  std::unique_ptr<engine::PrefixCache> cache_;  // null with prefix_cache off
  const engine::KeyScope scope_;
  int64_t local_resumes_ = 0;
  int64_t steps_ = 0, generated_total_ = 0, handoffs_ = 0;
  double handoff_seconds_ = 0;
  std::thread thread_;
};

}  // namespace strata::decode
