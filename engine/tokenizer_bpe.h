// Byte-level BPE on token ids: a pre-token's bytes start as the ids of their byte-level
// characters, then the adjacent pair with the lowest merge rank is merged, leftmost first on
// ties (what transformers.js's rank + position-bias queue computes), until no pair merges.
// Results are cached per pre-token. Thread-safe: Encode may run on many threads at once.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace strata::engine::internal_tokenizer {

// Bounded cache pre-token bytes -> ids. Direct-mapped: each word has one slot, a 64-byte entry
// holding the word and its ids inline (one cache line per lookup, nothing on the heap), and a
// new word simply replaces the old one in its slot. Sharded locks keep threads from contending.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 22;  // longer words are rare; they are not cached
  static constexpr size_t kMaxIds = 6;

  WordCache();

  // Appends the cached ids of `word` (hashed as `hash`) to *out; false when it is not cached.
  bool Lookup(std::string_view word, uint64_t hash, std::vector<int32_t>* out) const;
  // `word` and `count` must fit (kMaxWordBytes, kMaxIds).
  void Insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t count);

 private:
  static constexpr size_t kShardBits = 6;
  static constexpr size_t kEntriesPerShard = 1024;  // 64 x 1024 x 64 B = 4 MiB in all

  struct alignas(64) Entry {
    uint64_t hash;
    uint8_t length;  // 0: empty (pre-tokens are never empty)
    uint8_t count;
    char word[kMaxWordBytes];
    int32_t ids[kMaxIds];
  };
  struct Shard {
    mutable std::mutex mu;
    std::unique_ptr<Entry[]> entries;  // guarded by mu
  };
  Shard& ShardFor(uint64_t hash) const { return shards_[hash >> (64 - kShardBits)]; }
  static size_t Slot(uint64_t hash) { return hash & (kEntriesPerShard - 1); }

  std::unique_ptr<Shard[]> shards_;
};

class BpeModel {
 public:
  struct Merge {
    int32_t rank;    // position in the merge list: lower merges first
    int32_t merged;  // id of the concatenated token
  };
  static constexpr int32_t kNoMerge = std::numeric_limits<int32_t>::max();

  // `byte_ids[b]`: id of byte b's byte-level character. `merges`: keyed by PairKey(left, right).
  // `output_ids`: empty, or a replacement id per model id (an added token redefining a vocab
  // string, as the reference's shared string -> id map does).
  BpeModel(std::array<int32_t, 256> byte_ids, absl::flat_hash_map<uint64_t, Merge> merges,
           std::vector<int32_t> output_ids);

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  // Appends the ids of one pre-token (raw bytes, non-empty) to *out.
  void Encode(std::string_view piece, std::vector<int32_t>* out) const;

  // Uncached merging, exposed for tests: the short-word and long-word paths.
  void MergeShort(std::string_view piece, std::vector<int32_t>* out) const;
  void MergeLong(std::string_view piece, std::vector<int32_t>* out) const;

  // Words up to this many bytes take the quadratic scan (fast for short words), longer ones a
  // priority queue.
  static constexpr size_t kShortWordBytes = 48;

 private:
  const Merge* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find(PairKey(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }

  // The merge of each pair of single bytes (rank kNoMerge: none): the first round of every
  // word looks here, in a table small enough to stay in cache, instead of in merges_.
  const Merge& BytePairMerge(char left, char right) const {
    return byte_pair_merges_[static_cast<uint8_t>(left) << 8 | static_cast<uint8_t>(right)];
  }

  std::array<int32_t, 256> byte_ids_;
  std::vector<Merge> byte_pair_merges_;  // 256 x 256
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::vector<int32_t> output_ids_;
  mutable WordCache cache_;
};

}  // namespace strata::engine::internal_tokenizer
