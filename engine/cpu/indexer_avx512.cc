// AVX512-VNNI indexer kernels (indexer_kernels.h). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni and run only where the CPU has them (CpuBackend checks); see
// linear_kernels.h for why everything here has internal linkage.
//
// A call scores one query row against `groups` key groups of 16 keys. The accumulators of
// P heads × G groups stay in registers (P·G ≤ 16): per 4 dims, G key loads and P broadcasts of
// the row's codes feed P·G vpdpbusd (16 keys × 4 byte products each, into exact 32-bit sums).
// The key bytes are kc + 128, so each sum starts at −128·Σ qc.
#include "engine/cpu/indexer_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstring>

namespace strata::engine::cpu {
namespace {

// Groups per call for P heads: P·G accumulators, G keys and a broadcast in registers. Measured on
// Zen 4 (GCC 12): more accumulators than ~16 make the register allocator spill; fewer than ~8 make
// the loop bound by key loads from L2.
constexpr int GroupsFor(int p) { return p <= 3 ? 4 : p <= 5 ? 3 : 2; }

// The key width these kernels are built for (every DeepSeek-V4 indexer); others take the portable
// kernels. A constant width keeps the loads at fixed offsets from one pointer.
constexpr int64_t kDim = 128;

template <int P, int G>
inline void Tile(const uint8_t* keys, const float* kscale, const IndexerHeads& h, bool first,
                 float* out) {
  constexpr int64_t dim = kDim, group_bytes = kIndexerGroupKeys * dim;
  __m512i acc[P][G];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const __m512i init = _mm512_set1_epi32(-128 * h.qsum[p]);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[p][g] = init;
  }
  const int8_t* q[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) q[p] = h.q[p];
  for (int64_t c = 0; c < dim / 4; ++c) {
    __m512i k[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) k[g] = _mm512_loadu_si512(keys + g * group_bytes + c * 64);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      int32_t word;
      std::memcpy(&word, q[p] + 4 * c, 4);
      const __m512i b = _mm512_set1_epi32(word);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[p][g] = _mm512_dpbusd_epi32(acc[p][g], k[g], b);
    }
  }
  const __m512i zero = _mm512_setzero_si512();
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    const __m512 ks = _mm512_loadu_ps(kscale + g * kIndexerGroupKeys);
    __m512 score = first ? _mm512_setzero_ps() : _mm512_loadu_ps(out + g * kIndexerGroupKeys);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_max_epi32(acc[p][g], zero)), ks);
      score = _mm512_fmadd_ps(_mm512_set1_ps(h.wq[p]), x, score);
    }
    _mm512_storeu_ps(out + g * kIndexerGroupKeys, score);
  }
}

template <int P>
void HeadsOf(const uint8_t* keys, const float* kscale, int64_t groups, const IndexerHeads& h,
             bool first, float* out) {
  constexpr int G = GroupsFor(P);
  constexpr int64_t group_bytes = kIndexerGroupKeys * kDim;
  int64_t g = 0;
  for (; g + G <= groups; g += G) {
    Tile<P, G>(keys + g * group_bytes, kscale + g * kIndexerGroupKeys, h, first,
               out + g * kIndexerGroupKeys);
  }
  for (; g < groups; ++g) {
    Tile<P, 1>(keys + g * group_bytes, kscale + g * kIndexerGroupKeys, h, first,
               out + g * kIndexerGroupKeys);
  }
}

void Heads(const uint8_t* keys, const float* kscale, int64_t groups, int64_t dim,
           const IndexerHeads& h, bool first, float* out) {
  if (dim != kDim) {
    GenericIndexerKernels().heads(keys, kscale, groups, dim, h, first, out);
    return;
  }
  switch (h.heads) {
    case 1: return HeadsOf<1>(keys, kscale, groups, h, first, out);
    case 2: return HeadsOf<2>(keys, kscale, groups, h, first, out);
    case 3: return HeadsOf<3>(keys, kscale, groups, h, first, out);
    case 4: return HeadsOf<4>(keys, kscale, groups, h, first, out);
    case 5: return HeadsOf<5>(keys, kscale, groups, h, first, out);
    case 6: return HeadsOf<6>(keys, kscale, groups, h, first, out);
    case 7: return HeadsOf<7>(keys, kscale, groups, h, first, out);
    default: return HeadsOf<8>(keys, kscale, groups, h, first, out);
  }
}

void PassMasks(const float* scores, int64_t groups, float threshold, uint16_t* masks) {
  const __m512 t = _mm512_set1_ps(threshold);
  for (int64_t g = 0; g < groups; ++g) {
    masks[g] = _mm512_cmp_ps_mask(_mm512_loadu_ps(scores + g * kIndexerGroupKeys), t, _CMP_NLT_UQ);
  }
}

void GroupMax(const float* scores, int64_t groups, float* out) {
  for (int64_t g = 0; g < groups; ++g) {
    out[g] = _mm512_reduce_max_ps(_mm512_loadu_ps(scores + g * kIndexerGroupKeys));
  }
}

// Decoding: per key, the 64 code bytes become 128 stored bytes through a per-block table (the
// 16 values 2v·2^d + 128 of the block's shift d, one 128-bit lane per block of 32 codes), then
// the 16 keys of a group are written transposed, 4 bytes at a time.
void Decode(const uint8_t* const* entries, int64_t count, int64_t dim, uint8_t* keys,
            float* kscale, uint16_t* slow) {
  if (dim != kDim) {  // the vector path below holds one key in one register pair
    GenericIndexerKernels().decode(entries, count, dim, keys, kscale, slow);
    return;
  }
  // Rows of the table: 2v·2^d + 128 for d = 0 … 3, one 16-byte lane each.
  alignas(64) static const uint8_t kTables[64] = {
      128, 129, 130, 131, 132, 134, 136, 140, 128, 127, 126, 125, 124, 122, 120, 116,
      128, 130, 132, 134, 136, 140, 144, 152, 128, 126, 124, 122, 120, 116, 112, 104,
      128, 132, 136, 140, 144, 152, 160, 176, 128, 124, 120, 116, 112, 104, 96,  80,
      128, 136, 144, 152, 160, 176, 192, 224, 128, 120, 112, 104, 96,  80,  64,  32};
  const __m512i tables = _mm512_load_si512(kTables);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i magnitude = _mm512_set1_epi8(0x77);
  const int64_t groups = (count + kIndexerGroupKeys - 1) / kIndexerGroupKeys;
  alignas(64) uint8_t rows[kIndexerGroupKeys][128];
  for (int64_t g = 0; g < groups; ++g) {
    uint32_t slow_bits = 0;
    for (int64_t l = 0; l < kIndexerGroupKeys; ++l) {
      const int64_t j = g * kIndexerGroupKeys + l;
      __m512i lo = _mm512_set1_epi8(static_cast<char>(0x80)), hi = lo;
      float scale = 0.0f;
      if (j < count) {
        const uint8_t* e = entries[j];
        const __m512i bytes = _mm512_loadu_si512(e);
        // Lane b of the 64 code bytes is block b; a block is nonzero if a code has magnitude.
        const uint64_t nz = _mm512_test_epi8_mask(bytes, magnitude);
        int emin = 255, emax = -1;
        bool ok = true;
        int sc[4];
        for (int b = 0; b < 4; ++b) {
          sc[b] = e[64 + b];
          ok &= sc[b] != 0xFF;
          if ((nz >> (16 * b)) & 0xFFFF) {
            emin = sc[b] < emin ? sc[b] : emin;
            emax = sc[b] > emax ? sc[b] : emax;
          } else {
            sc[b] = -1;
          }
        }
        if (emax < 0) {
          emin = 128;
          emax = 128;
        }
        ok &= emax - emin <= 3 && emin - 128 >= -kIndexerMaxExponent &&
              emin - 128 <= kIndexerMaxExponent;
        if (ok) {
          // Each lane's table: the one of its block's shift (zero blocks: d = 0).
          const int d0 = sc[0] < 0 ? 0 : sc[0] - emin, d1 = sc[1] < 0 ? 0 : sc[1] - emin;
          const int d2 = sc[2] < 0 ? 0 : sc[2] - emin, d3 = sc[3] < 0 ? 0 : sc[3] - emin;
          const __m512i lane_of = _mm512_set_epi64(2 * d3 + 1, 2 * d3, 2 * d2 + 1, 2 * d2,
                                                   2 * d1 + 1, 2 * d1, 2 * d0 + 1, 2 * d0);
          const __m512i table = _mm512_permutexvar_epi64(lane_of, tables);
          const __m512i lo_codes = _mm512_and_si512(bytes, low4);
          const __m512i hi_codes = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);
          const __m512i a = _mm512_shuffle_epi8(table, lo_codes);
          const __m512i b = _mm512_shuffle_epi8(table, hi_codes);
          // Element order: byte i's low code, then its high code.
          lo = _mm512_unpacklo_epi8(a, b);  // lane b: codes 32b … 32b+15
          hi = _mm512_unpackhi_epi8(a, b);  // lane b: codes 32b+16 … 32b+31
          const uint32_t bits = static_cast<uint32_t>(emin + 127 - 128) << 23;
          std::memcpy(&scale, &bits, 4);
        } else {
          slow_bits |= 1u << l;
        }
      }
      kscale[j] = scale;
      // Natural order: per block b, lane b of lo then lane b of hi.
      const __m512i first = _mm512_shuffle_i64x2(lo, hi, 0x44);   // lo0 lo1 hi0 hi1
      const __m512i second = _mm512_shuffle_i64x2(lo, hi, 0xEE);  // lo2 lo3 hi2 hi3
      _mm512_store_si512(rows[l], _mm512_shuffle_i64x2(first, first, 0xD8));
      _mm512_store_si512(rows[l] + 64, _mm512_shuffle_i64x2(second, second, 0xD8));
    }
    slow[g] = static_cast<uint16_t>(slow_bits);
    // Transpose: dword c of key l goes to (c·16 + l)·4.
    const __m512i index = _mm512_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352,
                                            384, 416, 448, 480);
    uint8_t* group = keys + g * kIndexerGroupKeys * 128;
    for (int64_t c = 0; c < 32; ++c) {
      const __m512i column =
          _mm512_i32gather_epi32(index, reinterpret_cast<const int*>(rows[0] + 4 * c), 4);
      _mm512_storeu_si512(group + c * 64, column);
    }
  }
}

constexpr IndexerKernelTable kAvx512VnniTable{
    .name = "avx512vnni",
    .decode = Decode,
    .heads = Heads,
    .pass_masks = PassMasks,
    .group_max = GroupMax,
};

}  // namespace

const IndexerKernelTable* Avx512VnniIndexerKernels() { return &kAvx512VnniTable; }

}  // namespace strata::engine::cpu

#else  // not built for AVX512-VNNI (e.g. a non-x86 target)

namespace strata::engine::cpu {
const IndexerKernelTable* Avx512VnniIndexerKernels() { return nullptr; }
}  // namespace strata::engine::cpu

#endif
