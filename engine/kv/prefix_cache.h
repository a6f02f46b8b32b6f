// A worker's local prefix cache (DESIGN.md §5): full, sealed blocks of earlier sequences kept in
// the worker's own KvPool under their block keys (engine/kv/block_key.h), plus boundary
// checkpoints — the state slot (sliding window + compressor carry) at the end of some blocks. A
// new sequence whose first blocks are cached shares them read-only (a reference each) and resumes
// from the deepest cached block that has a checkpoint; the engine is chunk-invariant, so what it
// computes from there is bit-identical to computing the whole prompt cold.
//
// Eviction is least recently used, and a lookup or insert refreshes a chain from its last block
// to its first, so a chain's deeper blocks always go before the blocks they extend (a chain never
// loses its middle). Only entries whose block nobody else holds are evicted for space: dropping
// the cache's reference to a block a request still uses frees nothing.
//
// Which positions get a checkpoint is CheckpointPlan's business: every `every` blocks, and the
// last full block a sequence computes (so the next turn of a conversation, or the next question
// about a document, can resume right there).
//
// Threading: not thread-safe; one owner thread (a worker's scheduling loop).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "engine/kv/block_key.h"
#include "engine/kv/kv_cache.h"

namespace strata::engine {

// Where a sequence's state is kept: at block ends every `every` blocks, and at the last full
// block of the tokens it computes.
struct CheckpointPlan {
  int64_t every = 16;

  // Whether the state at `position` (tokens computed) is a checkpoint for a sequence computing
  // up to `end` tokens.
  bool Due(int64_t position, int64_t end) const;
  // The furthest a step starting at `position` may run towards `end` without stepping over a
  // checkpoint position (so the step's end state can be taken).
  int64_t ChunkEnd(int64_t position, int64_t end) const;
};

struct PrefixCacheOptions {
  int64_t max_blocks = 0;                        // 0: as many as the pool can spare
  int64_t max_checkpoint_bytes = int64_t{512} << 20;
  // Told which keys the cache took in (added) or dropped, once per Insert / eviction pass: what a
  // worker publishes to the prefix index. Runs on the owner thread; must not block.
  std::function<void(absl::Span<const BlockKey> keys, bool added)> on_change;
};

struct PrefixHit {
  int64_t matched_blocks = 0;       // consecutive keys found, from the first
  std::vector<int32_t> blocks;      // the first resume blocks; one reference each, the caller's
  std::vector<uint8_t> checkpoint;  // the state record at blocks.size() · 128 tokens
  int64_t tokens() const { return static_cast<int64_t>(blocks.size()) * kBlockTokens; }
};

struct PrefixCacheStats {
  int64_t lookups = 0, hits = 0;  // hits: lookups that gave a resumable prefix
  int64_t hit_tokens = 0;         // tokens those hits saved
  int64_t inserted_blocks = 0, evicted_blocks = 0;
  int64_t blocks = 0;             // entries now
  int64_t checkpoints = 0, checkpoint_bytes = 0;
};

class PrefixCache {
 public:
  PrefixCache(KvPool& pool, const PrefixCacheOptions& options);
  ~PrefixCache();  // drops every reference it holds
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The longest cached run of keys[0..), resumed at its deepest checkpoint within the first
  // `max_blocks` keys (a caller that must still compute some tokens itself passes fewer blocks
  // than its prompt has). No checkpoint: no blocks, nothing to resume from.
  PrefixHit Match(absl::Span<const BlockKey> keys, int64_t max_blocks);

  // Offers a sequence's full, sealed blocks (keys[i] names blocks[i]); the cache takes a
  // reference to each block it did not have under that key.
  void Insert(absl::Span<const BlockKey> keys, absl::Span<const int32_t> blocks);
  // The state record at the end of the block named `key` (which must be cached; else ignored).
  void InsertCheckpoint(const BlockKey& key, std::vector<uint8_t> state);

  // Drops least recently used entries that only the cache holds until `blocks` blocks have gone
  // back to the pool (or none is left to drop); returns how many did.
  int64_t Evict(int64_t blocks);
  // Blocks that Evict could free now.
  int64_t Evictable() const;
  bool Contains(const BlockKey& key) const { return index_.contains(key); }

  PrefixCacheStats stats() const { return stats_; }

 private:
  struct Entry {
    BlockKey key;
    int32_t block;
    std::vector<uint8_t> checkpoint;  // empty: none
  };
  using List = std::list<Entry>;  // most recently used first

  void Touch(List::iterator it);
  void Drop(List::iterator it);  // the key goes to dropped_ until FlushDropped()
  void FlushDropped();
  void TrimCheckpoints();
  void TrimBlocks();

  KvPool& pool_;
  const PrefixCacheOptions options_;
  List lru_;
  absl::flat_hash_map<BlockKey, List::iterator> index_;
  std::vector<BlockKey> dropped_;
  PrefixCacheStats stats_;
};

}  // namespace strata::engine
