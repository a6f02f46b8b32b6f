#include "engine/kv/prefix_cache.h"

#include <algorithm>
#include <utility>

namespace strata::engine {

bool CheckpointPlan::Due(int64_t position, int64_t end) const {
  if (position <= 0 || position % kBlockTokens != 0 || position > end) return false;
  const int64_t block = position / kBlockTokens;
  return (every > 0 && block % every == 0) || block == end / kBlockTokens;
}

int64_t CheckpointPlan::ChunkEnd(int64_t position, int64_t end) const {
  int64_t limit = end;
  if (every > 0) {
    const int64_t period = every * kBlockTokens;
    limit = std::min(limit, (position / period + 1) * period);
  }
  const int64_t last_full = end / kBlockTokens * kBlockTokens;
  if (last_full > position) limit = std::min(limit, last_full);
  return limit;
}

PrefixCache::PrefixCache(KvPool& pool, const PrefixCacheOptions& options)
    : pool_(pool), options_(options) {}

PrefixCache::~PrefixCache() {
  for (Entry& e : lru_) pool_.Free(e.block);
  // The keys stay in the index until their entries expire: a worker going away says nothing
  // (it may be killed anyway), and the router only asks about live workers.
}

void PrefixCache::Touch(List::iterator it) { lru_.splice(lru_.begin(), lru_, it); }

void PrefixCache::Drop(List::iterator it) {
  if (!it->checkpoint.empty()) {
    --stats_.checkpoints;
    stats_.checkpoint_bytes -= static_cast<int64_t>(it->checkpoint.size());
  }
  pool_.Free(it->block);
  dropped_.push_back(it->key);
  index_.erase(it->key);
  lru_.erase(it);
  --stats_.blocks;
  ++stats_.evicted_blocks;
}

void PrefixCache::FlushDropped() {
  if (!dropped_.empty() && options_.on_change) options_.on_change(dropped_, false);
  dropped_.clear();
}

PrefixHit PrefixCache::Match(absl::Span<const BlockKey> keys, int64_t max_blocks) {
  ++stats_.lookups;
  PrefixHit hit;
  const KvLayout& layout = pool_.layout();
  std::vector<List::iterator> chain;
  int64_t resume = 0;
  for (const BlockKey& key : keys) {
    auto found = index_.find(key);
    if (found == index_.end()) break;
    chain.push_back(found->second);
    const int64_t blocks = static_cast<int64_t>(chain.size());
    const std::vector<uint8_t>& state = found->second->checkpoint;
    if (blocks <= max_blocks && !state.empty()) {
      const auto* header = reinterpret_cast<const KvRecordHeader*>(state.data());
      if (header->tokens == static_cast<uint64_t>(blocks * kBlockTokens) &&
          VerifyKvRecord(state.data(), static_cast<int64_t>(state.size()), KvRecordKind::kState,
                         layout.fingerprint())
              .ok()) {
        resume = blocks;
      }
    }
  }
  hit.matched_blocks = static_cast<int64_t>(chain.size());
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) Touch(*it);
  if (resume == 0) return hit;
  for (int64_t b = 0; b < resume; ++b) {
    const int32_t block = chain[static_cast<size_t>(b)]->block;
    pool_.Ref(block);
    hit.blocks.push_back(block);
  }
  hit.checkpoint = chain[static_cast<size_t>(resume - 1)]->checkpoint;
  ++stats_.hits;
  stats_.hit_tokens += hit.tokens();
  return hit;
}

void PrefixCache::Insert(absl::Span<const BlockKey> keys, absl::Span<const int32_t> blocks) {
  const size_t n = std::min(keys.size(), blocks.size());
  std::vector<List::iterator> chain;
  std::vector<BlockKey> added;
  for (size_t i = 0; i < n; ++i) {
    auto found = index_.find(keys[i]);
    if (found != index_.end()) {
      chain.push_back(found->second);
      continue;
    }
    pool_.Ref(blocks[i]);
    lru_.push_front(Entry{keys[i], blocks[i], {}});
    index_[keys[i]] = lru_.begin();
    chain.push_back(lru_.begin());
    added.push_back(keys[i]);
    ++stats_.blocks;
    ++stats_.inserted_blocks;
  }
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) Touch(*it);
  if (!added.empty() && options_.on_change) options_.on_change(added, true);
  TrimBlocks();
}

void PrefixCache::InsertCheckpoint(const BlockKey& key, std::vector<uint8_t> state) {
  auto found = index_.find(key);
  if (found == index_.end() || state.empty()) return;
  Entry& e = *found->second;
  if (!e.checkpoint.empty()) {
    --stats_.checkpoints;
    stats_.checkpoint_bytes -= static_cast<int64_t>(e.checkpoint.size());
  }
  stats_.checkpoint_bytes += static_cast<int64_t>(state.size());
  ++stats_.checkpoints;
  e.checkpoint = std::move(state);
  TrimCheckpoints();
}

void PrefixCache::TrimCheckpoints() {
  for (auto it = lru_.end(); stats_.checkpoint_bytes > options_.max_checkpoint_bytes &&
                             it != lru_.begin();) {
    --it;
    if (it->checkpoint.empty()) continue;
    stats_.checkpoint_bytes -= static_cast<int64_t>(it->checkpoint.size());
    --stats_.checkpoints;
    std::vector<uint8_t>().swap(it->checkpoint);
  }
}

void PrefixCache::TrimBlocks() {
  while (options_.max_blocks > 0 && stats_.blocks > options_.max_blocks) {
    Drop(std::prev(lru_.end()));
  }
  FlushDropped();
}

int64_t PrefixCache::Evict(int64_t blocks) {
  int64_t freed = 0;
  for (auto it = lru_.end(); freed < blocks && it != lru_.begin();) {
    --it;
    if (pool_.refs(it->block) != 1) continue;  // someone else holds it: dropping frees nothing
    auto victim = it;
    ++it;  // stays valid: list iterators survive erasing other elements
    Drop(victim);
    ++freed;
  }
  FlushDropped();
  return freed;
}

int64_t PrefixCache::Evictable() const {
  int64_t n = 0;
  for (const Entry& e : lru_) n += pool_.refs(e.block) == 1 ? 1 : 0;
  return n;
}

}  // namespace strata::engine
