// The kvstore's unit of storage: a *slot* holding one KV record (engine/kv/kv_cache.h: a block, or
// a checkpoint — a state record at a block end) followed by a tail naming it. RAM slots and SSD
// slots have the same size and bytes, 4 KiB-aligned, so a slot moves between the tiers with one
// direct-I/O read or write and no copy, and the record part is exactly the bytes every other
// component sends and verifies.
//
//   [ record (record_bytes) | zero padding | tail (64 B) ]   slot_bytes = roundup(record + 64, 4 KiB)
//
// The tail is what rebuilds the SSD tier's index at start-up; it carries its own checksum, and the
// record's checksum (in its header) is checked on every read, so a torn or corrupt slot is a miss.
#pragma once

#include <cstdint>
#include <cstring>

#include "engine/kv/block_key.h"
#include "engine/kv/kv_cache.h"
#include "xxhash.h"

namespace strata::kvstore {

inline constexpr int64_t kSlotAlign = 4096;
inline constexpr uint64_t kSlotMagic = 0x31544F4C53564B53ull;  // "SKVSLOT1"

struct SlotTail {
  uint64_t magic = 0;  // kSlotMagic; 0 in a free slot
  uint64_t key_lo = 0, key_hi = 0;
  uint32_t kind = 0;  // engine::KvRecordKind
  uint32_t record_bytes = 0;
  uint64_t fingerprint = 0;  // the KV layout's
  uint64_t sequence = 0;     // when it was written: LRU order across restarts
  uint64_t reserved = 0;
  uint64_t checksum = 0;  // XXH3-64 of the 56 bytes before it
};
static_assert(sizeof(SlotTail) == 64);

inline int64_t SlotBytes(int64_t record_bytes) {
  return (record_bytes + static_cast<int64_t>(sizeof(SlotTail)) + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
}

inline SlotTail* TailOf(uint8_t* slot, int64_t slot_bytes) {
  return reinterpret_cast<SlotTail*>(slot + slot_bytes - static_cast<int64_t>(sizeof(SlotTail)));
}
inline const SlotTail* TailOf(const uint8_t* slot, int64_t slot_bytes) {
  return reinterpret_cast<const SlotTail*>(slot + slot_bytes - static_cast<int64_t>(sizeof(SlotTail)));
}

inline uint64_t TailChecksum(const SlotTail& t) { return XXH3_64bits(&t, offsetof(SlotTail, checksum)); }

inline void WriteTail(uint8_t* slot, int64_t slot_bytes, const engine::BlockKey& key, engine::KvRecordKind kind,
                      int64_t record_bytes, uint64_t fingerprint, uint64_t sequence) {
  SlotTail t;
  t.magic = kSlotMagic;
  t.key_lo = key.lo;
  t.key_hi = key.hi;
  t.kind = static_cast<uint32_t>(kind);
  t.record_bytes = static_cast<uint32_t>(record_bytes);
  t.fingerprint = fingerprint;
  t.sequence = sequence;
  t.checksum = TailChecksum(t);
  std::memcpy(TailOf(slot, slot_bytes), &t, sizeof(t));
}

// Whether `tail` names a record of this kind, size and layout (its own checksum intact).
inline bool TailValid(const SlotTail& t, engine::KvRecordKind kind, int64_t record_bytes, uint64_t fingerprint) {
  return t.magic == kSlotMagic && t.checksum == TailChecksum(t) && t.kind == static_cast<uint32_t>(kind) &&
         t.record_bytes == static_cast<uint32_t>(record_bytes) && t.fingerprint == fingerprint;
}

}  // namespace strata::kvstore
