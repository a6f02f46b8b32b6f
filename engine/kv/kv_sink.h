// engine::KvSink (DESIGN.md §4): where a sequence's finished KV goes while, and after, it is
// computed — a decode worker's pool over UCX (prefill/push_sink.h), the kvstore, or another pool
// in this process (PoolKvSink). The producer hands it byte ranges of its own pool's records,
// addressed by the sequence's block index, and state records; the sink decides where they land.
// Everything is the engine's record bytes (engine/kv/kv_cache.h), so a receiver verifies exactly
// what it got.
//
// Lifetime: a put may read the producer's memory until it has settled: the producer keeps its
// blocks (and never writes them again) while Pending() > 0. State bytes are copied before
// PutState returns.
//
// Threading: one producer thread calls Put*/Wait; Pending() may be called from any thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace strata::engine {

class KvPool;

// `bytes` of the producer's record at `local`, for the sequence's block `block` at `offset`
// within the record.
struct KvPage {
  const uint8_t* local = nullptr;
  int64_t block = 0;
  int64_t offset = 0;
  int64_t bytes = 0;
};

enum class KvStateKind {
  kFinal,       // the state at the end of what the producer computes
  kCheckpoint,  // a boundary checkpoint: the state at a block end (engine/kv/prefix_cache.h)
};

class KvSink {
 public:
  virtual ~KvSink() = default;
  // The pages of one call go as one operation (one completion).
  virtual void PutPages(absl::Span<const KvPage> pages) = 0;
  // A state record (KvLayout::state_bytes()); a sink with no place for `kind` ignores it.
  virtual void PutState(absl::Span<const uint8_t> state, KvStateKind kind) = 0;
  // Waits until everything put so far has landed; the first error of any put, or
  // DeadlineExceeded (the puts then stay pending).
  virtual absl::Status Wait(absl::Duration timeout) = 0;
  // Puts issued and not yet settled.
  virtual int64_t Pending() const = 0;
  // Bytes put so far.
  virtual uint64_t bytes() const = 0;
};

// Into blocks of a KvPool in this process (and host buffers for the state records), copied at
// once: the in-process hand-off, and the reference the other sinks are tested against.
class PoolKvSink final : public KvSink {
 public:
  // `blocks[i]` receives the sequence's block i; `state` and `checkpoint` (either may be null)
  // receive the state records.
  PoolKvSink(KvPool& pool, std::vector<int32_t> blocks, uint8_t* state, uint8_t* checkpoint);

  void PutPages(absl::Span<const KvPage> pages) override;
  void PutState(absl::Span<const uint8_t> state, KvStateKind kind) override;
  absl::Status Wait(absl::Duration) override { return first_error_; }
  int64_t Pending() const override { return 0; }
  uint64_t bytes() const override { return bytes_; }

 private:
  KvPool& pool_;
  const std::vector<int32_t> blocks_;
  uint8_t* const state_;
  uint8_t* const checkpoint_;
  absl::Status first_error_;
  uint64_t bytes_ = 0;
};

}  // namespace strata::engine
