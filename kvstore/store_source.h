// An engine::KvSource over a BlockStore in this process: what a worker's kvstore client does over
// gRPC and UCX, done with memcpy — the in-process twin the prefill worker's tests run against.
//
// Threading: thread-safe; fetches and writes run on a thread of its own, as the client's do.
#pragma once

#include <memory>

#include "common/thread_pool.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/kv_source.h"
#include "kvstore/block_store.h"

namespace strata::kvstore {

class StoreKvSource final : public engine::KvSource {
 public:
  StoreKvSource(BlockStore& store, engine::KvPool& pool) : store_(store), pool_(pool) {}
  ~StoreKvSource() override = default;  // runs what is queued

  void Fetch(absl::Span<const engine::BlockKey> keys, int64_t max_blocks, absl::Span<const int32_t> blocks,
             uint8_t* checkpoint, std::function<void(absl::StatusOr<int64_t>)> done) override;
  void WriteBack(std::vector<engine::BlockKey> keys, std::vector<int32_t> blocks,
                 std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints) override;

 private:
  BlockStore& store_;
  engine::KvPool& pool_;
  ThreadPool thread_{1, 1024};
};

}  // namespace strata::kvstore
