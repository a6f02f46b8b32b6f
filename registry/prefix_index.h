// The prefix index (DESIGN.md §4): which locations — a worker's local prefix cache, named by its
// registry id, or a kvstore tier — hold which KV blocks, by block key (engine/kv/block_key.h, as
// 32 hex digits). Workers add the keys their cache takes in and remove those it evicts; the
// router asks, for a request's chain of keys, how long a run from the first each location holds,
// to send the request where its prefix already is. The index is a hint: a stale entry costs only a
// miss at the worker, which then computes what it lacks.
//
// Implementations: RedisPrefixIndex (a set of locations per key, `strata:<cluster>:pfx:<key>`,
// each expiring `ttl` after it was last added to, so a dead worker's entries lapse) and
// InMemoryPrefixIndex (tests).
//
// PrefixPublisher sends a worker's adds and removes to the index from a thread of its own, so a
// worker's scheduling loop never waits on Redis.
//
// Threading: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "registry/registry.h"

namespace strata::registry {

struct PrefixRun {
  std::string location;
  int64_t blocks = 0;  // keys[0..blocks) are all held there
};

class PrefixIndex {
 public:
  virtual ~PrefixIndex() = default;
  virtual absl::Status Add(const std::string& location, absl::Span<const std::string> keys) = 0;
  virtual absl::Status Remove(const std::string& location, absl::Span<const std::string> keys) = 0;
  // Every location holding keys[0], with the length of its run from there; longest first.
  virtual absl::StatusOr<std::vector<PrefixRun>> Longest(absl::Span<const std::string> keys) = 0;
};

std::unique_ptr<PrefixIndex> MakeInMemoryPrefixIndex();

struct RedisPrefixIndexOptions {
  RedisOptions redis;
  absl::Duration ttl = absl::Minutes(30);
};
absl::StatusOr<std::unique_ptr<PrefixIndex>> MakeRedisPrefixIndex(const RedisPrefixIndexOptions& options);

// Runs of several locations from the keys' per-location membership: for each location in
// holders[0], how many consecutive keys from the first list it. Longest first, then by name.
std::vector<PrefixRun> RunsFromHolders(const std::vector<std::vector<std::string>>& holders);

class PrefixPublisher {
 public:
  // At most `max_pending` keys wait; past that the oldest updates are dropped (and counted): the
  // index then says too little or too much for a while, which costs misses, never wrong KV.
  PrefixPublisher(PrefixIndex& index, std::string location, int64_t max_pending = 1 << 20);
  ~PrefixPublisher();  // sends what is queued (best effort, bounded by the index's timeouts)

  void Added(std::vector<std::string> keys);
  void Removed(std::vector<std::string> keys);

  int64_t dropped() const;
  int64_t failures() const;

 private:
  struct Update {
    bool add;
    std::vector<std::string> keys;
  };
  void Queue(bool add, std::vector<std::string> keys);
  void Loop();

  PrefixIndex& index_;
  const std::string location_;
  const int64_t max_pending_;
  mutable absl::Mutex mu_;
  std::deque<Update> queue_ ABSL_GUARDED_BY(mu_);
  int64_t pending_keys_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace strata::registry
