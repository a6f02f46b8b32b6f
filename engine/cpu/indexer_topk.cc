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

void IndexerRowScan::Begin(int64_t begin, int64_t end) {
  begin_ = begin;
  end_ = end;
  const int64_t groups = (end - begin + kIndexerGroupKeys - 1) / kIndexerGroupKeys;
  // Padded to whole masks of 16 groups for pass_masks.
  group_bound_.assign(static_cast<size_t>((groups + 15) / 16 * 16),
                      -std::numeric_limits<float>::infinity());
  slice_best_.clear();
}

void IndexerRowScan::OfferGroup(const IndexerKernelTable& kernels, const IndexerRowForm& row,
                                const IndexerKeyView& k, int64_t g, uint32_t mask,
                                IndexerScanScratch& scratch, TopKCandidates& top) const {
  row.Scores(kernels, k.keys + g * kIndexerGroupKeys * k.dim, k.kscale + g * kIndexerGroupKeys, 1,
             /*bound=*/false, scratch.full);
  for (; mask != 0; mask &= mask - 1) {
    const int l = __builtin_ctz(mask);
    top.Offer(scratch.full[l], static_cast<int32_t>(g * kIndexerGroupKeys + l));
  }
}

void IndexerRowScan::Slice(const IndexerKernelTable& kernels, const IndexerRowForm& row,
                           const IndexerKeyView& k, int64_t j0, int64_t j1,
                           IndexerScanScratch& scratch, TopKCandidates& top) {
  if (j1 <= j0) return;
  const int64_t g0 = j0 / kIndexerGroupKeys;
  const int64_t groups = (j1 - j0 + kIndexerGroupKeys - 1) / kIndexerGroupKeys;
  scratch.scores.resize(static_cast<size_t>(groups * kIndexerGroupKeys));
  scratch.masks.resize(static_cast<size_t>(groups));
  float* scores = scratch.scores.data();
  const uint8_t* keys = k.keys + g0 * kIndexerGroupKeys * k.dim;
  const float* kscale = k.kscale + g0 * kIndexerGroupKeys;
  // The lanes of each group that are visible and not slow.
  auto lanes = [&](int64_t g) {
    uint32_t m = 0xFFFFu & ~static_cast<uint32_t>(k.slow[g0 + g]);
    const int64_t first = j0 + g * kIndexerGroupKeys;
    if (j1 - first < kIndexerGroupKeys) m &= (1u << (j1 - first)) - 1u;
    return m;
  };
  if (row.bound_is_score()) {
    // Every score is final: offer those reaching the running threshold.
    if (row.has_bound_heads()) {
      row.Scores(kernels, keys, kscale, groups, /*bound=*/true, scores);
    } else {
      std::fill(scores, scores + groups * kIndexerGroupKeys, 0.0f);
    }
    uint16_t* masks = scratch.masks.data();
    kernels.pass_masks(scores, groups, top.threshold(), masks);
    for (int64_t g = 0; g < groups; ++g) {
      for (uint32_t m = masks[g] & lanes(g); m != 0; m &= m - 1) {
        const int l = __builtin_ctz(m);
        top.Offer(scores[g * kIndexerGroupKeys + l],
                  static_cast<int32_t>(j0 + g * kIndexerGroupKeys + l));
      }
    }
    return;
  }
  if (row.has_bound_heads()) {
    row.Scores(kernels, keys, kscale, groups, /*bound=*/true, scores);
  } else {
    std::fill(scores, scores + groups * kIndexerGroupKeys, 0.0f);
  }
  float* bound = group_bound_.data() + (g0 - begin_ / kIndexerGroupKeys);
  kernels.group_max(scores, groups, bound);
  Best best{-std::numeric_limits<float>::infinity(), -1};
  for (int64_t g = 0; g < groups; ++g) {
    const uint32_t m = lanes(g);
    if (m != 0xFFFFu) {  // the last group, or slow keys: the bound of the other lanes only
      float b = -std::numeric_limits<float>::infinity();
      for (uint32_t r = m; r != 0; r &= r - 1) b = std::max(b, scores[g * kIndexerGroupKeys + __builtin_ctz(r)]);
      bound[g] = b;
    }
    if (bound[g] > best.bound) best = Best{bound[g], g0 + g};
  }
  if (best.group >= 0) slice_best_.push_back(best);
}

void IndexerRowScan::Finish(const IndexerKernelTable& kernels, const IndexerRowForm& row,
                            const IndexerKeyView& k, const float* q, const float* w,
                            int64_t heads, IndexerScanScratch& scratch, TopKCandidates& top) {
  const int64_t first_group = begin_ / kIndexerGroupKeys;
  const int64_t groups = (end_ - begin_ + kIndexerGroupKeys - 1) / kIndexerGroupKeys;
  auto lanes = [&](int64_t g) {
    uint32_t m = 0xFFFFu & ~static_cast<uint32_t>(k.slow[g]);
    const int64_t last = end_ - g * kIndexerGroupKeys;
    if (last < kIndexerGroupKeys) m &= (1u << last) - 1u;
    return m;
  };
  if (!row.bound_is_score()) {
    // Seeds: the slices' best groups with the largest bounds, scored in full first.
    constexpr int64_t kSeeds = 16;
    const int64_t seeds = std::min<int64_t>(kSeeds, static_cast<int64_t>(slice_best_.size()));
    auto higher = [](const Best& a, const Best& b) { return a.bound > b.bound; };
    std::partial_sort(slice_best_.begin(), slice_best_.begin() + seeds, slice_best_.end(), higher);
    for (int64_t i = 0; i < seeds; ++i) {
      const int64_t g = slice_best_[static_cast<size_t>(i)].group;
      OfferGroup(kernels, row, k, g, lanes(g), scratch, top);
      group_bound_[static_cast<size_t>(g - first_group)] = -std::numeric_limits<float>::infinity();
    }
    // Then the groups whose bound reaches the threshold, largest bound first: the threshold
    // rises fastest that way, and once a bound is below it so are all the rest.
    const int64_t chunks = static_cast<int64_t>(group_bound_.size()) / kIndexerGroupKeys;
    scratch.masks.resize(static_cast<size_t>(chunks));
    kernels.pass_masks(group_bound_.data(), chunks, top.threshold(), scratch.masks.data());
    std::vector<Best>& order = slice_best_;  // reused
    order.clear();
    for (int64_t c = 0; c < chunks; ++c) {
      for (uint32_t m = scratch.masks[static_cast<size_t>(c)]; m != 0; m &= m - 1) {
        const int64_t i = c * kIndexerGroupKeys + __builtin_ctz(m);
        // (−inf: a seed, already offered, or a group with no lane to offer.)
        const float b = group_bound_[static_cast<size_t>(i)];
        if (i < groups && b != -std::numeric_limits<float>::infinity()) {
          order.push_back(Best{b, first_group + i});
        }
      }
    }
    // A heap, not a sort: usually only a few of them come out before the rest fall below.
    auto lower = [](const Best& a, const Best& b) { return a.bound < b.bound; };
    std::make_heap(order.begin(), order.end(), lower);
    for (auto end = order.end(); end != order.begin(); --end) {
      std::pop_heap(order.begin(), end, lower);
      const Best& g = *(end - 1);
      if (g.bound < top.threshold()) break;
      OfferGroup(kernels, row, k, g.group, lanes(g.group), scratch, top);
    }
  }
  // Slow keys of the range.
  const int32_t* slow_end = k.slow_index + k.slow_count;
  for (const int32_t* it = std::lower_bound(k.slow_index, slow_end, static_cast<int32_t>(begin_));
       it != slow_end && *it < end_; ++it) {
    const float* key = k.slow_values + (it - k.slow_index) * k.dim;
    top.Offer(ReferenceScore(q, w, heads, key, k.dim), *it);
  }
}

}  // namespace strata::engine::cpu
