// engine::KvSource (DESIGN.md §4): where cached prefix blocks come from when a worker's own prefix
// cache lacks them, and where a worker writes back the new full blocks it computed — the kvstore
// over UCX (kvstore/kvstore_client.h), or a store in this process (kvstore::StoreKvSource, for
// tests). A fetch fills blocks of the
// caller's pool with the deepest prefix of a key chain that the source holds with a checkpoint at
// its end, and the checkpoint itself; the caller then resumes from there exactly as from its own
// cache (engine/kv/prefix_cache.h).
//
// Threading: Fetch may be called from any thread and never blocks; `done` runs on a thread of the
// source's. The destination blocks and buffer stay the caller's, untouched by it until `done`.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/kv/block_key.h"

namespace strata::engine {

class KvSource {
 public:
  virtual ~KvSource() = default;
  // Fills blocks[0..n) of the caller's pool with the records of keys[0..n) and `checkpoint`
  // (KvLayout::state_bytes()) with the state after block n − 1, for the largest n ≤ max_blocks it
  // can; `done` gets n (0: nothing usable), or an error (then the blocks hold nothing usable).
  virtual void Fetch(absl::Span<const BlockKey> keys, int64_t max_blocks, absl::Span<const int32_t> blocks,
                     uint8_t* checkpoint, std::function<void(absl::StatusOr<int64_t>)> done) = 0;

  // Stores keys[i] ↔ block i of the caller's pool (full, sealed; one reference to each passes to
  // the source, which drops it once the block is written or skipped) and the checkpoints
  // (position, state record), off the caller's thread. Best effort: a source that is behind or
  // unreachable skips it (a later request then computes those blocks again).
  virtual void WriteBack(std::vector<BlockKey> keys, std::vector<int32_t> blocks,
                         std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints) = 0;
};

}  // namespace strata::engine
