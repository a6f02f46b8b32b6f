#include "engine/cpu/indexer_topk.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace strata::engine::cpu {

float ReferenceScore(const float* q, const float* w, int64_t heads, const float* key,
                     int64_t dim) {
  float score = 0;
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * dim;
    float dot = 0;
    for (int64_t i = 0; i < dim; ++i) dot += qh[i] * key[i];
    score = std::fma(w[h], std::max(dot, 0.0f), score);
  }
  return score;
}

bool IndexerRowForm::Prepare(const float* q, const float* w, int64_t heads, int64_t dim) {
  dim_ = dim;
  codes_.resize(static_cast<size_t>(heads * dim));
  q_.resize(static_cast<size_t>(heads));
  qsum_.resize(static_cast<size_t>(heads));
  wq_.resize(static_cast<size_t>(heads));
  full_.clear();
  bound_.clear();
  const float min_w = std::ldexp(1.0f, -kIndexerMaxExponent), max_w = std::ldexp(1.0f, 20);
  for (int64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * dim;
    int8_t* codes = codes_.data() + h * dim;
    q_[static_cast<size_t>(h)] = codes;
    const float wh = w[h];
    // A head whose term is ±0 for every key (q = 0 or w = 0) leaves every running sum as it is
    // (the sum starts at +0 and never becomes −0): it is skipped.
    if (!std::isfinite(wh)) return false;
    float amax = 0;
    for (int64_t i = 0; i < dim; ++i) amax = std::max(amax, std::fabs(qh[i]));
    if (!(amax <= std::numeric_limits<float>::max())) return false;  // inf or NaN
    if (amax == 0 || wh == 0) continue;
    if (std::fabs(wh) < min_w || std::fabs(wh) > max_w) return false;
    // q = code · 2^eq with |code| < 128: eq from the largest value, then every value must be an
    // integer multiple of 2^eq.
    const int eq = std::ilogb(amax) - 6;
    if (eq < -kIndexerMaxExponent || eq > kIndexerMaxExponent) return false;
    int32_t sum = 0;
    for (int64_t i = 0; i < dim; ++i) {
      const float v = std::ldexp(qh[i], -eq);
      if (v != std::nearbyint(v)) return false;
      codes[i] = static_cast<int8_t>(v);
      sum += codes[i];
    }
    qsum_[static_cast<size_t>(h)] = sum;
    wq_[static_cast<size_t>(h)] = std::ldexp(wh, eq);
    full_.push_back(static_cast<int>(h));
    if (wh > 0) bound_.push_back(static_cast<int>(h));
  }
  return true;
}

void IndexerRowForm::Run(const IndexerKernelTable& kernels, const std::vector<int>& heads,
                         const uint8_t* keys, const float* kscale, int64_t groups,
                         float* out) const {
  if (heads.empty()) {
    std::fill(out, out + groups * kIndexerGroupKeys, 0.0f);
    return;
  }
  run_q_.resize(heads.size());
  run_qsum_.resize(heads.size());
  run_wq_.resize(heads.size());
  for (size_t i = 0; i < heads.size(); ++i) {
    const size_t h = static_cast<size_t>(heads[i]);
    run_q_[i] = q_[h];
    run_qsum_[i] = qsum_[h];
    run_wq_[i] = wq_[h];
  }
  // Blocks of heads in order, each adding its terms to the running sums.
  for (size_t p0 = 0; p0 < heads.size(); p0 += kIndexerMaxHeads) {
    const int n = static_cast<int>(std::min<size_t>(kIndexerMaxHeads, heads.size() - p0));
    const IndexerHeads block{run_q_.data() + p0, run_qsum_.data() + p0, run_wq_.data() + p0, n};
    kernels.heads(keys, kscale, groups, dim_, block, p0 == 0, out);
  }
}

void IndexerRowForm::Scores(const IndexerKernelTable& kernels, const uint8_t* keys,
                            const float* kscale, int64_t groups, bool bound, float* out) const {
  Run(kernels, bound ? bound_ : full_, keys, kscale, groups, out);
}

void TopKCandidates::Reset(int64_t k) {
  k_ = k;
  size_ = 0;
  threshold_ = -std::numeric_limits<float>::infinity();
  entries_.resize(static_cast<size_t>(std::max<int64_t>(2 * k, 32)));
}

uint32_t TopKCandidates::SortKey(float score) {
  if (score == 0) score = 0;  // −0 → +0
  uint32_t u;
  std::memcpy(&u, &score, sizeof(u));
  return (u & 0x80000000u) != 0 ? ~u : u | 0x80000000u;
}

void TopKCandidates::Shrink() {
  std::nth_element(entries_.begin(), entries_.begin() + (k_ - 1), entries_.begin() + size_, Better);
  size_ = k_;
  // The k-th best: an offer below it can never be among the best k. (A NaN k-th lets everything
  // through, which is slow but still exact.)
  threshold_ = entries_[static_cast<size_t>(k_ - 1)].score;
}

const TopKCandidates::Entry* TopKCandidates::Finish(int64_t* count) {
  if (size_ > k_) {
    std::nth_element(entries_.begin(), entries_.begin() + (k_ - 1), entries_.begin() + size_,
                     Better);
    size_ = k_;
  }
  *count = size_;
  return entries_.data();
}

void ScanKeys(const IndexerKernelTable& kernels, const IndexerRowForm& row, const IndexerKeyView& k,
              const float* q, const float* w, int64_t heads, int64_t begin, int64_t end,
              IndexerScanScratch& scratch, TopKCandidates& top) {
  if (end <= begin) return;
  const int64_t g0 = begin / kIndexerGroupKeys;
  const int64_t groups = (end - begin + kIndexerGroupKeys - 1) / kIndexerGroupKeys;
  const uint8_t* keys = k.keys + g0 * kIndexerGroupKeys * k.dim;
  const float* kscale = k.kscale + g0 * kIndexerGroupKeys;
  scratch.scores.resize(static_cast<size_t>(groups * kIndexerGroupKeys));
  scratch.masks.resize(static_cast<size_t>(groups));
  float* scores = scratch.scores.data();
  uint16_t* masks = scratch.masks.data();
  if (row.has_bound_heads()) {
    row.Scores(kernels, keys, kscale, groups, /*bound=*/true, scores);
    kernels.pass_masks(scores, groups, top.threshold(), masks);
  } else {
    // The bound is 0 for every key.
    const uint16_t all = !(0.0f < top.threshold()) ? 0xFFFF : 0;
    std::fill(masks, masks + groups, all);
  }
  const bool exact = row.bound_is_score();
  for (int64_t g = 0; g < groups; ++g) {
    uint32_t m = masks[g] & ~static_cast<uint32_t>(k.slow[g0 + g]);
    const int64_t first = begin + g * kIndexerGroupKeys;
    if (end - first < kIndexerGroupKeys) m &= (1u << (end - first)) - 1u;
    if (m == 0) continue;
    const float* s = scores + g * kIndexerGroupKeys;
    if (!exact) {
      row.Scores(kernels, keys + g * kIndexerGroupKeys * k.dim, kscale + g * kIndexerGroupKeys, 1,
                 /*bound=*/false, scratch.full);
      s = scratch.full;
    }
    for (; m != 0; m &= m - 1) {
      const int l = __builtin_ctz(m);
      top.Offer(s[l], static_cast<int32_t>(first + l));
    }
  }
  // Slow keys of the range.
  const int32_t* slow_end = k.slow_index + k.slow_count;
  for (const int32_t* it = std::lower_bound(k.slow_index, slow_end, static_cast<int32_t>(begin));
       it != slow_end && *it < end; ++it) {
    const float* key = k.slow_values + (it - k.slow_index) * k.dim;
    top.Offer(ReferenceScore(q, w, heads, key, k.dim), *it);
  }
}

}  // namespace strata::engine::cpu
