// Private to engine/cpu: the per-row parts of CpuBackend::IndexerTopK (cpu_attention.cc), which
// decodes a sequence's indexer keys once into key groups (indexer_kernels.h), splits its rows
// (and, for few rows, its keys) over the threads, and merges what each part keeps.
//
// Exactness. Definition (engine/backend.h, and the scalar reference): score(j) = Σ_h w_h ·
// ReLU(q_h·k_j) in FP32, heads in order, top-k with ties to the lower j. For a "fast" row and key
// every q value is qc·2^eq (|qc| ≤ 127) and every key value kc·2^ek (|kc| ≤ 96), so every product
// and every partial sum of q_h·k_j is a multiple of 2^(eq+ek) below 2^24 of them in magnitude:
// FP32 holds each exactly, whatever the summation order (the reference's left-to-right, this
// backend's earlier 16 interleaved sums, or an integer sum). The fast path computes that exact
// integer, then w·ReLU(dot) and the head sum with the definition's FP32 roundings. Rows and keys
// outside that form (never produced by the model's FP4 simulation; possible through the API) are
// scored by ReferenceScore, the definition's own loop, so results equal the reference in all cases.
//
// Pruning. Dropping a head whose term w·ReLU(dot) is ≤ 0 can only raise an FP32 running sum
// (rounding is monotonic), so the sum over the heads with w > 0 bounds the score from above. A
// key whose bound is below the k-th best score seen so far for its row cannot be chosen; only the
// others are scored in full. This skips the negative-weight heads for most keys and changes no
// result.
//
// Threading: the objects here are per thread (one per work item at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/cpu/indexer_kernels.h"

namespace strata::engine::cpu {

// The definition's loop for one row and one decoded key: Σ_h w[h] · max(q_h·key, 0), every sum
// left to right in FP32.
float ReferenceScore(const float* q, const float* w, int64_t heads, const float* key, int64_t dim);

// One query row in the kernels' integer form.
class IndexerRowForm {
 public:
  // False if the row has no exact integer form (then use ReferenceScore).
  bool Prepare(const float* q, const float* w, int64_t heads, int64_t dim);

  // out[0 : 16·groups] = the scores of the keys of `groups` key groups, over every head (full)
  // or over the heads with w > 0 only (the bound).
  void Scores(const IndexerKernelTable& kernels, const uint8_t* keys, const float* kscale,
              int64_t groups, bool bound, float* out) const;
  // Whether the bound is the score itself (no head with w < 0).
  bool bound_is_score() const { return full_.size() == bound_.size(); }
  bool has_bound_heads() const { return !bound_.empty(); }
  int64_t dim() const { return dim_; }

 private:
  void Run(const IndexerKernelTable& kernels, const std::vector<int>& heads, const uint8_t* keys,
           const float* kscale, int64_t groups, float* out) const;

  int64_t dim_ = 0;
  std::vector<int8_t> codes_;     // [heads][dim]
  std::vector<const int8_t*> q_;  // per head, into codes_
  std::vector<int32_t> qsum_;
  std::vector<float> wq_;
  std::vector<int> full_, bound_;  // heads that contribute (w ≠ 0, q ≠ 0) / and have w > 0
  // Gathered per call of Run: the kernels take the heads of one call contiguously.
  mutable std::vector<const int8_t*> run_q_;
  mutable std::vector<int32_t> run_qsum_;
  mutable std::vector<float> run_wq_;
};

// The best k (score, index) pairs offered so far, in the definition's order (higher score first;
// equal scores: lower index first). Offers below threshold() are dropped at once.
class TopKCandidates {
 public:
  struct Entry {
    uint32_t key;  // the score's order as an unsigned integer (see SortKey)
    int32_t index;
    float score;
  };

  void Reset(int64_t k);
  float threshold() const { return threshold_; }
  void Offer(float score, int32_t index) {
    if (score < threshold_) return;
    entries_[static_cast<size_t>(size_++)] = Entry{SortKey(score), index, score};
    if (size_ == static_cast<int64_t>(entries_.size())) Shrink();
  }
  // The best min(k, offered) entries, in no particular order.
  const Entry* Finish(int64_t* count);

  // A total order of FP32 scores as unsigned integers: −0 and +0 equal, otherwise as the values
  // compare (NaNs at the ends).
  static uint32_t SortKey(float score);
  static bool Better(const Entry& a, const Entry& b) {
    return a.key != b.key ? a.key > b.key : a.index < b.index;
  }

 private:
  void Shrink();  // keeps the best k, raises the threshold to the k-th

  int64_t k_ = 0, size_ = 0;
  float threshold_ = 0;
  std::vector<Entry> entries_;
};

// A sequence's decoded keys: key groups, scales, slow-key masks, and the decoded values of the
// slow keys (scored with ReferenceScore).
struct IndexerKeyView {
  const uint8_t* keys;
  const float* kscale;
  const uint16_t* slow;
  const int32_t* slow_index;  // increasing
  const float* slow_values;   // [slow_count][dim]
  int64_t slow_count;
  int64_t dim;
};

// Scratch of one row scan's slices: their bounds and masks.
struct IndexerScanScratch {
  std::vector<float> scores;
  std::vector<uint16_t> masks;
  float full[kIndexerGroupKeys];
};

// One fast row's scan of its key range [begin, end) (begin a multiple of 16): Slice() for each
// slice of the range in turn, then Finish(). Rows whose bound is their score offer every key as
// its slice is scored. The others keep, per key group, the largest bound of its visible keys;
// Finish() first scores in full the groups with the largest bounds (so the threshold starts near
// its final value), then every other group whose bound reaches the threshold, then the slow keys.
class IndexerRowScan {
 public:
  void Begin(int64_t begin, int64_t end);
  // Keys [j0, j1) of the range (j0 a multiple of 16).
  void Slice(const IndexerKernelTable& kernels, const IndexerRowForm& row,
             const IndexerKeyView& k, int64_t j0, int64_t j1, IndexerScanScratch& scratch,
             TopKCandidates& top);
  void Finish(const IndexerKernelTable& kernels, const IndexerRowForm& row,
              const IndexerKeyView& k, const float* q, const float* w, int64_t heads,
              IndexerScanScratch& scratch, TopKCandidates& top);

 private:
  // Offers the full scores of group g (of the view) where mask has a bit.
  void OfferGroup(const IndexerKernelTable& kernels, const IndexerRowForm& row,
                  const IndexerKeyView& k, int64_t g, uint32_t mask, IndexerScanScratch& scratch,
                  TopKCandidates& top) const;

  int64_t begin_ = 0, end_ = 0;
  std::vector<float> group_bound_;  // per group of the range (−inf: nothing visible there)
  struct Best {
    float bound;
    int64_t group;
  };
  std::vector<Best> slice_best_;  // each slice's group with the largest bound
};

}  // namespace strata::engine::cpu
