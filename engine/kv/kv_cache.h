// The KV cache's memory (DESIGN.md §5): a paged pool of fixed-size blocks, each covering 128
// tokens of every layer, and per-request state slots. Blocks and slots are records — a 64-byte
// header (magic, version, kind, layout fingerprint, payload size, token count, XXH3 checksum)
// followed by the payload — so the bytes in the pool are the bytes sent over the wire and written
// to disk; Verify() is what a receiver or a reader from disk runs before trusting them.
//
// Blocks are reference counted. Allocate() hands out a zeroed block with one reference, its
// writer's; once sealed and full a block is immutable, and others may share it read-only by
// taking references of their own (a request reusing a cached prefix, a prefix-cache entry, a
// transfer still reading it). Free() drops one reference; the block goes back to the free list
// only when the last one is dropped, so nothing can hand out a block that anyone may still read
// or write.
//
// Threading: KvPool's methods are thread-safe; a block's contents belong to whoever holds its id
// (while shared: read-only for everyone).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/backend.h"
#include "engine/kv/kv_layout.h"

namespace strata::engine {

enum class KvRecordKind : uint16_t { kBlock = 1, kState = 2 };

struct KvRecordHeader {
  uint32_t magic;        // kKvMagic
  uint16_t version;      // kKvVersion
  uint16_t kind;         // KvRecordKind
  uint64_t fingerprint;  // KvLayout::fingerprint()
  uint64_t payload_bytes;
  uint64_t tokens;    // block: tokens written (≤ 128); state: the sequence position
  uint64_t checksum;  // XXH3-64 of the payload, set by Seal()
  uint8_t reserved[24];
};
static_assert(sizeof(KvRecordHeader) == kKvHeaderBytes);

inline constexpr uint32_t kKvMagic = 0x3156'4B53;  // "SKV1" little-endian
inline constexpr uint16_t kKvVersion = 1;

// Writes the header of a record of `total_bytes` (header included) with its checksum.
void SealKvRecord(uint8_t* record, int64_t total_bytes, KvRecordKind kind, uint64_t fingerprint,
                  uint64_t tokens);
// Checks magic, version, kind, layout and checksum; the message says which failed.
absl::Status VerifyKvRecord(const uint8_t* record, int64_t total_bytes, KvRecordKind kind,
                            uint64_t fingerprint);

class KvPool {
 public:
  // Host memory (what a transport registers), or, given a backend whose memory is not host
  // memory (a GPU), that backend's memory: then block() pointers are backend memory, read and
  // written only through the backend. Aborts if the backend cannot allocate the pool (a
  // deployment sized beyond the device).
  KvPool(const KvLayout& layout, int64_t num_blocks, Backend* backend = nullptr);

  // A zeroed block id with one reference; ResourceExhausted when the pool is full.
  absl::StatusOr<int32_t> Allocate();
  // One more reference to a block someone already holds (CHECK-fails on a free block).
  void Ref(int32_t id);
  // Drops one reference; the last one returns the block to the free list.
  void Free(int32_t id);
  int32_t refs(int32_t id) const;
  uint8_t* block(int32_t id) { return memory() + static_cast<size_t>(id) * layout_.block_bytes(); }
  const uint8_t* block(int32_t id) const {
    return const_cast<KvPool*>(this)->memory() + static_cast<size_t>(id) * layout_.block_bytes();
  }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const;
  const KvLayout& layout() const { return layout_; }
  // The whole pool, for registering with a transport.
  uint8_t* memory() { return device_.get() != nullptr ? device_.as<uint8_t>() : host_.get(); }
  bool host_memory() const { return device_.get() == nullptr; }
  int64_t memory_bytes() const { return num_blocks_ * layout_.block_bytes(); }

 private:
  void CheckHeld(int32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const KvLayout layout_;
  const int64_t num_blocks_;
  Backend* const backend_;  // set when the pool is in backend memory
  std::unique_ptr<uint8_t[]> host_;
  DeviceBuffer device_;
  mutable absl::Mutex mu_;
  std::vector<int32_t> free_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> refs_ ABSL_GUARDED_BY(mu_);
};

// One sequence's cache: its position, block table and state slot. Owned by the engine's step
// loop (one thread).
struct SequenceCache {
  int64_t position = 0;         // tokens processed so far
  std::vector<int32_t> blocks;  // block b covers tokens [128b, 128b + 128)
  std::vector<uint8_t> state;   // KvLayout::state_bytes(), on backends with host memory
  DeviceBuffer device_state;    // the same, on other backends (Model::NewSequence decides)

  uint8_t* state_data() {
    return device_state.get() != nullptr ? device_state.as<uint8_t>() : state.data();
  }
};

}  // namespace strata::engine
