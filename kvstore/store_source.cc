#include "kvstore/store_source.h"

#include <cstring>
#include <utility>

namespace strata::kvstore {

using engine::KvRecordKind;

void StoreKvSource::Fetch(absl::Span<const engine::BlockKey> keys, int64_t max_blocks, absl::Span<const int32_t> blocks,
                          uint8_t* checkpoint, std::function<void(absl::StatusOr<int64_t>)> done) {
  std::vector<engine::BlockKey> k(keys.begin(), keys.end());
  std::vector<int32_t> b(blocks.begin(), blocks.end());
  thread_.Schedule([this, k = std::move(k), b = std::move(b), max_blocks, checkpoint, done] {
    absl::StatusOr<BlockStore::Pin> pin =
        store_.Acquire(k, std::min<int64_t>(max_blocks, static_cast<int64_t>(b.size())));
    if (!pin.ok()) return done(pin.status());
    const int64_t bytes = pool_.layout().block_bytes();
    for (size_t i = 0; i < pin->blocks.size(); ++i) {
      std::memcpy(pool_.block(b[i]), store_.arena(KvRecordKind::kBlock) + pin->blocks[i], static_cast<size_t>(bytes));
    }
    if (!pin->blocks.empty()) {
      std::memcpy(checkpoint, store_.arena(KvRecordKind::kState) + pin->checkpoint,
                  static_cast<size_t>(pool_.layout().state_bytes()));
    }
    store_.Release(pin->id);
    done(static_cast<int64_t>(pin->blocks.size()));
  });
}

void StoreKvSource::WriteBack(std::vector<engine::BlockKey> keys, std::vector<int32_t> blocks,
                              std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints) {
  thread_.Schedule([this, keys = std::move(keys), blocks = std::move(blocks), checkpoints = std::move(checkpoints)] {
    std::vector<BlockStore::Item> items;
    std::vector<const uint8_t*> from;
    for (size_t i = 0; i < keys.size() && i < blocks.size(); ++i) {
      items.push_back({keys[i], KvRecordKind::kBlock, engine::kBlockTokens});
      from.push_back(pool_.block(blocks[i]));
    }
    for (const auto& [position, state] : checkpoints) {
      const size_t block = static_cast<size_t>(position / engine::kBlockTokens);
      if (block < 1 || block > keys.size()) continue;
      items.push_back({keys[block - 1], KvRecordKind::kState, position});
      from.push_back(state.data());
    }
    absl::StatusOr<BlockStore::Reservation> r = store_.Reserve(items);
    if (r.ok()) {
      for (size_t i = 0; i < items.size(); ++i) {
        if (r->offsets[i] < 0) continue;
        std::memcpy(store_.arena(items[i].kind) + r->offsets[i], from[i], static_cast<size_t>(store_.record_bytes(items[i].kind)));
      }
      (void)store_.Commit(r->id);
    }
    for (int32_t b : blocks) pool_.Free(b);
  });
}

}  // namespace strata::kvstore
