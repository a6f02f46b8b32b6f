// The portable indexer kernels (indexer_kernels.h): plain C++ over the key-group layout, the
// fallback where no SIMD table applies, and the definition the SIMD tables are tested against.
#include "engine/cpu/indexer_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace strata::engine::cpu {
namespace {

// Twice the E2M1 value of each nibble: an integer in [−12, 12].
constexpr int8_t kTwiceE2M1[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// For a shift d ≤ 3: both codes of a packed byte as stored bytes (2v·2^d + 128), low nibble
// first, as one little-endian 16-bit word.
struct PairTables {
  uint16_t pair[4][256];
  constexpr PairTables() : pair() {
    for (int d = 0; d < 4; ++d) {
      for (int b = 0; b < 256; ++b) {
        const int lo = kTwiceE2M1[b & 15] * (1 << d) + 128, hi = kTwiceE2M1[b >> 4] * (1 << d) + 128;
        pair[d][b] = static_cast<uint16_t>(lo | (hi << 8));
      }
    }
  }
};
constexpr PairTables kPairs;

float Pow2(int e) {  // e in the normal range
  const uint32_t bits = static_cast<uint32_t>(e + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// The integer form of one key: its per-block shifts and exponent, or false (slow key).
bool KeyShifts(const uint8_t* entry, int64_t dim, int* shift, float* kscale) {
  const uint8_t* scales = entry + dim / 2;
  int emin = 255, emax = -1;
  for (int64_t b = 0; b < dim / 32; ++b) {
    if (scales[b] == 0xFF) return false;  // NaN scale: every value is NaN
    bool nonzero = false;
    for (int64_t i = 0; i < 16; ++i) nonzero |= (entry[b * 16 + i] & 0x77) != 0;
    shift[b] = nonzero ? scales[b] : -1;
    if (nonzero) {
      emin = std::min<int>(emin, scales[b]);
      emax = std::max<int>(emax, scales[b]);
    }
  }
  if (emax < 0) {  // every value is ±0
    for (int64_t b = 0; b < dim / 32; ++b) shift[b] = 0;
    *kscale = 1.0f;
    return true;
  }
  // value = 2v · 2^(e − 128): ek = emin − 128, code = 2v · 2^(e − emin) with |code| ≤ 96.
  if (emax - emin > 3 || emin - 128 < -kIndexerMaxExponent || emin - 128 > kIndexerMaxExponent) {
    return false;
  }
  for (int64_t b = 0; b < dim / 32; ++b) shift[b] = shift[b] < 0 ? 0 : shift[b] - emin;
  *kscale = Pow2(emin - 128);
  return true;
}

void Decode(const uint8_t* const* entries, int64_t count, int64_t dim, uint8_t* keys,
            float* kscale, uint16_t* slow) {
  const int64_t groups = (count + kIndexerGroupKeys - 1) / kIndexerGroupKeys;
  const int64_t chunks = dim / 4;
  for (int64_t g = 0; g < groups; ++g) {
    uint8_t* group = keys + g * kIndexerGroupKeys * dim;
    slow[g] = 0;
    for (int64_t l = 0; l < kIndexerGroupKeys; ++l) {
      const int64_t j = g * kIndexerGroupKeys + l;
      int shift[32];
      float scale = 1.0f;
      const bool fast = j < count && KeyShifts(entries[j], dim, shift, &scale);
      if (j < count && !fast) slow[g] = static_cast<uint16_t>(slow[g] | (1u << l));
      kscale[j] = fast ? scale : 0.0f;
      for (int64_t c = 0; c < chunks; ++c) {
        uint32_t word = 0x80808080u;
        if (fast) {
          const uint16_t* table = kPairs.pair[shift[c / 8]];
          const uint8_t* bytes = entries[j] + 2 * c;
          word = static_cast<uint32_t>(table[bytes[0]]) |
                 (static_cast<uint32_t>(table[bytes[1]]) << 16);
        }
        std::memcpy(group + (c * kIndexerGroupKeys + l) * 4, &word, 4);
      }
    }
  }
}

void Heads(const uint8_t* keys, const float* kscale, int64_t groups, int64_t dim,
           const IndexerHeads& h, bool first, float* out) {
  const int64_t chunks = dim / 4;
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* group = keys + g * kIndexerGroupKeys * dim;
    for (int64_t l = 0; l < kIndexerGroupKeys; ++l) {
      const int64_t j = g * kIndexerGroupKeys + l;
      float score = first ? 0.0f : out[j];
      for (int p = 0; p < h.heads; ++p) {
        int32_t s = -128 * h.qsum[p];
        for (int64_t c = 0; c < chunks; ++c) {
          const uint8_t* k = group + (c * kIndexerGroupKeys + l) * 4;
          const int8_t* q = h.q[p] + 4 * c;
          s += k[0] * q[0] + k[1] * q[1] + k[2] * q[2] + k[3] * q[3];
        }
        const float x = static_cast<float>(std::max(s, 0)) * kscale[j];
        score = std::fma(h.wq[p], x, score);
      }
      out[j] = score;
    }
  }
}

void PassMasks(const float* scores, int64_t groups, float threshold, uint16_t* masks) {
  for (int64_t g = 0; g < groups; ++g) {
    uint32_t m = 0;
    for (int64_t l = 0; l < kIndexerGroupKeys; ++l) {
      if (!(scores[g * kIndexerGroupKeys + l] < threshold)) m |= 1u << l;
    }
    masks[g] = static_cast<uint16_t>(m);
  }
}

void GroupMax(const float* scores, int64_t groups, float* out) {
  for (int64_t g = 0; g < groups; ++g) {
    out[g] = *std::max_element(scores + g * kIndexerGroupKeys, scores + (g + 1) * kIndexerGroupKeys);
  }
}

constexpr IndexerKernelTable kGenericTable{
    .name = "generic",
    .decode = Decode,
    .heads = Heads,
    .pass_masks = PassMasks,
    .group_max = GroupMax,
};

}  // namespace

const IndexerKernelTable& GenericIndexerKernels() { return kGenericTable; }

}  // namespace strata::engine::cpu
