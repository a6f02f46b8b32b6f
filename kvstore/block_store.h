// The kvstore's store (DESIGN.md §1 step 5, §5): content-addressed KV records — full blocks, and
// boundary checkpoints (the state at a block's end) — under their block keys, in a RAM tier of
// registered slots (what peers' UCX puts land in and fetches are sent from) and an optional SSD
// tier (kvstore/ssd_tier.h) written through on commit, so the RAM tier is a cache of it and a
// restart keeps what the SSD tier holds. Both tiers evict least recently used.
//
// Writes are two-phase: Reserve lends free RAM slots for a writer's puts — a slot being written
// is never served — and Commit verifies each record (checksum, layout, position) before making it
// servable; a record that fails is dropped and counted. Reads pin what they return: a pinned slot
// is never evicted or reused. Both kinds of lease expire (ExpireLeases), so a writer or reader
// that dies leaks nothing. A record read from the SSD tier is verified again; a corrupt one is a
// miss (counted, deleted), never served.
//
// Threading: thread-safe; SSD I/O runs outside the lock.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "engine/kv/block_key.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/kv_layout.h"
#include "kvstore/ssd_tier.h"

namespace strata::kvstore {

struct BlockStoreOptions {
  int64_t ram_bytes = int64_t{1} << 30;
  std::string ssd_dir;  // empty: RAM only
  int64_t ssd_bytes = 0;
  double checkpoint_share = 0.25;  // of each tier, for checkpoints (the rest: blocks)
  absl::Duration write_lease = absl::Seconds(60);
  absl::Duration read_lease = absl::Seconds(60);
  bool direct_io = true;
  // Told which keys became servable (added) and which no tier holds any more, for the prefix
  // index; called outside the store's lock.
  std::function<void(absl::Span<const engine::BlockKey> keys, bool added)> on_change;
};

struct StoreStats {
  int64_t ram_blocks = 0, ram_checkpoints = 0;
  int64_t lookups = 0;
  int64_t hits_ram = 0, hits_ssd = 0;  // records served, by the tier they came from
  int64_t bytes_ram = 0, bytes_ssd = 0;
  int64_t misses = 0;                  // reads that found nothing usable
  int64_t committed = 0, rejected = 0;  // records made servable / dropped at commit (did not verify)
  int64_t ram_evictions = 0;
  int64_t corrupt = 0;  // records that failed verification when read from the SSD tier
  int64_t write_lease_expiries = 0, read_lease_expiries = 0;
  SsdStats ssd;
};

class BlockStore {
 public:
  static absl::StatusOr<std::unique_ptr<BlockStore>> Open(const engine::KvLayout& layout,
                                                          const BlockStoreOptions& options,
                                                          Clock& clock = Clock::Real());
  ~BlockStore();

  // The RAM tier's slots of one kind (kBlock or kState): 4 KiB-aligned, slot_bytes() apart.
  uint8_t* arena(engine::KvRecordKind kind) const;
  int64_t arena_bytes(engine::KvRecordKind kind) const;
  int64_t slot_bytes(engine::KvRecordKind kind) const;
  int64_t record_bytes(engine::KvRecordKind kind) const;

  // How many of keys[0..) are stored (any tier), and the deepest of those blocks with a
  // checkpoint at its end (0: none). Reads nothing.
  struct Found {
    int64_t blocks = 0;
    int64_t checkpoint_blocks = 0;
  };
  Found Find(absl::Span<const engine::BlockKey> keys);

  // Pins what a reader resumes from: blocks [0, n) and the checkpoint after block n − 1, for the
  // deepest checkpointed n ≤ max_blocks; records only on the SSD tier are read into RAM first.
  // n = 0 (nothing pinned) when there is no such prefix.
  struct Pin {
    uint64_t id = 0;
    std::vector<int64_t> blocks;  // byte offsets into arena(kBlock), one per block
    int64_t checkpoint = -1;      // byte offset into arena(kState)
    int64_t tokens() const { return static_cast<int64_t>(blocks.size()) * engine::kBlockTokens; }
  };
  absl::StatusOr<Pin> Acquire(absl::Span<const engine::BlockKey> keys, int64_t max_blocks);
  void Release(uint64_t pin);

  struct Item {
    engine::BlockKey key;
    engine::KvRecordKind kind;  // kBlock, or kState for the checkpoint at the end of that block
    int64_t tokens = 0;         // the record's position (its header's `tokens`): checked at commit
  };
  // Phase 1: RAM slots for the records not stored yet (offset −1: already stored or being
  // written). ResourceExhausted when the RAM tier has too few slots free of pins and writers.
  struct Reservation {
    uint64_t id = 0;
    std::vector<int64_t> offsets;  // into arena(item.kind)
  };
  absl::StatusOr<Reservation> Reserve(absl::Span<const Item> items);
  // Phase 2: verifies the reserved slots and makes the good ones servable (writing them through
  // to the SSD tier); returns how many were stored. NotFound for an unknown or expired id.
  absl::StatusOr<int64_t> Commit(uint64_t reservation);
  void Abort(uint64_t reservation);

  // Reservations and pins past their lease. Expired pins are released here; expired
  // reservations are returned (the caller revokes the writer's access, then Aborts them).
  std::vector<uint64_t> ExpireLeases();
  // Empties the RAM tier of everything not pinned or being written (the SSD tier keeps its
  // copies): how `strata bench prefix` measures reads from the SSD tier.
  void DropRam();

  StoreStats stats() const;
  absl::Duration write_lease() const { return options_.write_lease; }
  // Every block key the store holds (any tier): what a restarted kvstore publishes again.
  std::vector<engine::BlockKey> StoredBlocks() const;

 private:
  struct Arena;
  struct Slot;
  BlockStore(const engine::KvLayout& layout, const BlockStoreOptions& options, Clock& clock);
  Arena& arena_of(engine::KvRecordKind kind) const;
  // A free RAM slot (evicting the least recently used unpinned one); −1 if none.
  int32_t TakeSlot(Arena& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool StoredLocked(Arena& a, const engine::BlockKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Pin> AcquireOnce(absl::Span<const engine::BlockKey> keys, int64_t max_blocks);
  absl::StatusOr<Reservation> ReserveLocked(absl::Span<const Item> items);
  void Notify(std::vector<engine::BlockKey> keys, bool added);
  void FlushGone();  // tells on_change of the keys in gone_

  const engine::KvLayout layout_;
  const BlockStoreOptions options_;
  Clock& clock_;
  std::unique_ptr<Arena> blocks_, checkpoints_;
  std::unique_ptr<SsdTier> ssd_;

  mutable absl::Mutex mu_;
  struct PinRecord {
    std::vector<std::pair<engine::KvRecordKind, int32_t>> slots;
    absl::Time until;
  };
  absl::flat_hash_map<uint64_t, PinRecord> pins_ ABSL_GUARDED_BY(mu_);
  struct ReservationRecord {
    std::vector<Item> items;
    std::vector<int32_t> slots;  // −1: skipped
    absl::Time until;
  };
  absl::flat_hash_map<uint64_t, ReservationRecord> reservations_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<engine::BlockKey> gone_ ABSL_GUARDED_BY(mu_);  // no tier holds them any more
  StoreStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::kvstore
