// The kvstore's SSD tier: two preallocated slot files under its folder — blocks.slots and
// checkpoints.slots — of fixed-size slots (kvstore/slot.h), read and written whole with direct
// I/O, many at once through io_uring (pread/pwrite where io_uring is unavailable). Records are
// evicted least recently used per file when it is full. Start-up rebuilds the index from the slot
// tails, so a restarted kvstore serves what it had; a slot whose tail or record does not verify is
// a miss, counted and freed, never served.
//
// Threading: thread-safe. Reads and writes of different calls overlap; a slot being read is never
// overwritten meanwhile.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "engine/kv/block_key.h"
#include "engine/kv/kv_cache.h"

namespace strata::kvstore {

struct SsdTierOptions {
  std::string dir;
  int64_t block_slots = 0, checkpoint_slots = 0;
  int64_t block_record_bytes = 0, checkpoint_record_bytes = 0;  // KvLayout's block and state bytes
  uint64_t fingerprint = 0;                                     // KvLayout's
  bool direct_io = true;  // O_DIRECT; off where the filesystem refuses it (tmpfs)
};

struct SsdStats {
  int64_t blocks = 0, checkpoints = 0;  // records held
  int64_t reads = 0, read_bytes = 0, writes = 0, write_bytes = 0;
  int64_t corrupt = 0;    // slots that failed verification on a read (freed)
  int64_t evictions = 0;  // records overwritten for space
  int64_t recovered = 0;  // records found at start-up
  bool io_uring = false;
};

class SsdTier {
 public:
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(const SsdTierOptions& options);
  ~SsdTier();

  // One record's slot in memory: 4 KiB-aligned, SlotBytes(record) long, its tail written.
  struct Item {
    engine::BlockKey key;
    engine::KvRecordKind kind;
    uint8_t* slot;
  };
  // Writes whole slots (a record already under its key is left as it is: keys name contents),
  // evicting the least recently used as needed; the keys it evicted go to `evicted`.
  std::vector<absl::Status> Write(absl::Span<const Item> items,
                                  std::vector<std::pair<engine::BlockKey, engine::KvRecordKind>>* evicted = nullptr);
  // Reads records into the items' slots: OK, NotFound, or DataLoss (torn or corrupt: removed).
  std::vector<absl::Status> Read(absl::Span<const Item> items);
  bool Contains(const engine::BlockKey& key, engine::KvRecordKind kind) const;
  std::vector<engine::BlockKey> Keys(engine::KvRecordKind kind) const;
  void Remove(const engine::BlockKey& key, engine::KvRecordKind kind);
  int64_t slot_bytes(engine::KvRecordKind kind) const;
  SsdStats stats() const;

 private:
  struct File;
  class Io;
  explicit SsdTier(const SsdTierOptions& options);
  File& file(engine::KvRecordKind kind) const;
  absl::Status Recover(File& f);
  void Erase(File& f, int32_t slot);  // zeroes the slot's tail on disk, then frees it

  const SsdTierOptions options_;
  std::unique_ptr<File> blocks_, checkpoints_;
  std::unique_ptr<Io> io_;
  mutable absl::Mutex mu_;
  SsdStats stats_ ABSL_GUARDED_BY(mu_);
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace strata::kvstore
