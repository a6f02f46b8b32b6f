#include "engine/tokenizer_bpe.h"

#include <xxhash.h>

#include <cstring>
#include <limits>
#include <queue>
#include <utility>

namespace strata::engine::internal_tokenizer {
WordCache::WordCache() : shards_(new Shard[size_t{1} << kShardBits]) {
  for (size_t i = 0; i < (size_t{1} << kShardBits); ++i) {
    shards_[i].entries.reset(new Entry[kEntriesPerShard]());
  }
}

bool WordCache::Lookup(std::string_view word, uint64_t hash, std::vector<int32_t>* out) const {
  Shard& shard = ShardFor(hash);
  std::lock_guard<std::mutex> lock(shard.mu);
  const Entry& e = shard.entries[Slot(hash)];
  if (e.hash != hash || e.length != word.size() ||
      std::memcmp(e.word, word.data(), word.size()) != 0) {
    return false;
  }
  out->insert(out->end(), e.ids, e.ids + e.count);
  return true;
}

void WordCache::Insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t count) {
  Shard& shard = ShardFor(hash);
  std::lock_guard<std::mutex> lock(shard.mu);
  Entry& e = shard.entries[Slot(hash)];
  e.hash = hash;
  e.length = static_cast<uint8_t>(word.size());
  e.count = static_cast<uint8_t>(count);
  std::memcpy(e.word, word.data(), word.size());
  std::memcpy(e.ids, ids, count * sizeof(int32_t));
}

BpeModel::BpeModel(std::array<int32_t, 256> byte_ids, absl::flat_hash_map<uint64_t, Merge> merges,
                   std::vector<int32_t> output_ids)
    : byte_ids_(byte_ids),
      byte_pair_merges_(256 * 256, Merge{kNoMerge, -1}),
      merges_(std::move(merges)),
      output_ids_(std::move(output_ids)) {
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      if (const Merge* m = FindMerge(byte_ids_[a], byte_ids_[b]); m != nullptr) {
        byte_pair_merges_[a << 8 | b] = *m;
      }
    }
  }
}

void BpeModel::Encode(std::string_view piece, std::vector<int32_t>* out) const {
  const bool cacheable = piece.size() <= WordCache::kMaxWordBytes;
  const uint64_t hash = cacheable ? XXH3_64bits(piece.data(), piece.size()) : 0;
  if (cacheable && cache_.Lookup(piece, hash, out)) return;
  const size_t first = out->size();
  if (piece.size() <= kShortWordBytes) {
    MergeShort(piece, out);
  } else {
    MergeLong(piece, out);
  }
  if (!output_ids_.empty()) {
    for (size_t i = first; i < out->size(); ++i) (*out)[i] = output_ids_[(*out)[i]];
  }
  if (cacheable && out->size() - first <= WordCache::kMaxIds) {
    cache_.Insert(piece, hash, out->data() + first, out->size() - first);
  }
}

void BpeModel::MergeShort(std::string_view piece, std::vector<int32_t>* out) const {
  // ids[i] is symbol i; merges[i] is what merging symbols i and i+1 gives (rank kNoMerge: none).
  int32_t ids[kShortWordBytes];
  Merge merges[kShortWordBytes];
  size_t n = piece.size();
  for (size_t i = 0; i < n; ++i) ids[i] = byte_ids_[static_cast<uint8_t>(piece[i])];
  auto update = [&](size_t i) {
    const Merge* m = FindMerge(ids[i], ids[i + 1]);
    merges[i] = m != nullptr ? *m : Merge{kNoMerge, -1};
  };
  for (size_t i = 0; i + 1 < n; ++i) merges[i] = BytePairMerge(piece[i], piece[i + 1]);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (merges[i].rank < merges[best].rank) best = i;  // strict: the leftmost wins ties
    }
    if (merges[best].rank == kNoMerge) break;
    ids[best] = merges[best].merged;
    for (size_t i = best + 1; i + 1 < n; ++i) {
      ids[i] = ids[i + 1];
      merges[i] = merges[i + 1];
    }
    --n;
    if (best > 0) update(best - 1);
    if (best + 1 < n) update(best);
  }
  out->insert(out->end(), ids, ids + n);
}

void BpeModel::MergeLong(std::string_view piece, std::vector<int32_t>* out) const {
  // Symbols form a linked list over the byte positions; a symbol is named by the position of
  // its first byte, which orders candidates exactly like the reference's positional bias.
  const size_t n = piece.size();
  struct Symbol {
    int32_t id;
    int32_t prev;  // -1: none
    int32_t next;  // -1: none
  };
  std::vector<Symbol> symbols(n);
  for (size_t i = 0; i < n; ++i) {
    symbols[i] = {byte_ids_[static_cast<uint8_t>(piece[i])], static_cast<int32_t>(i) - 1,
                  i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  }
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left;   // ids the pair had when queued: a candidate whose symbols have changed
    int32_t right;  // since is stale and skipped
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue(std::greater<>(),
                                                                               std::move(storage));
  auto push = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    const Merge* m = FindMerge(symbols[pos].id, symbols[next].id);
    if (m != nullptr) queue.push({m->rank, pos, symbols[pos].id, symbols[next].id});
  };
  for (size_t i = 0; i + 1 < n; ++i) {
    const Merge& m = BytePairMerge(piece[i], piece[i + 1]);
    if (m.rank != kNoMerge) {
      queue.push({m.rank, static_cast<int32_t>(i), symbols[i].id, symbols[i + 1].id});
    }
  }
  std::vector<bool> dead(n, false);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.pos];
    if (dead[c.pos] || left.id != c.left || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != c.right) continue;
    // Symbol ids only ever grow into longer tokens, so matching ids mean the pair is current.
    left.id = FindMerge(c.left, c.right)->merged;
    dead[left.next] = true;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = c.pos;
    if (left.prev >= 0) push(left.prev);
    push(c.pos);
  }
  for (int32_t pos = 0; pos >= 0; pos = symbols[pos].next) out->push_back(symbols[pos].id);
}

}  // namespace strata::engine::internal_tokenizer
