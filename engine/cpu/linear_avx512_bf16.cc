// FP8 / FP4 linear kernels for CPUs with AVX512-BF16 and AVX512-VBMI (Zen 4, Sapphire Rapids):
// see Bf16KernelTable in linear_kernels.h for why vdpbf16ps gives the FP32 kernels' results.
// Compiled with the AVX-512 flags plus -mavx512vbmi -mavx512bf16; CpuBackend runs it only where
// the CPU has them. Internal linkage throughout, as linear_kernels.h explains.
//
// Decoding costs a few instructions per 64 weights, so the dot form decodes in registers and never
// stores a panel:
//   E4M3 -> BF16: the high and low bytes of the BF16 of each magnitude come from two 128-entry
//     tables (vpermt2b on the byte itself, its sign bit is ignored and then OR-ed back in);
//     vpunpck{l,h}bw pairs them into words, which reorders the weights within each 128-bit lane,
//     so the activations are stored in that order. The block scale is folded into the activations
//     (one 128-row block of weights shares a scale per 128 columns).
//   E2M1 -> BF16: the bytes are widened to words; the low and high nibbles index (vpermw) a
//     32-word table holding the 16 values times the scale of each of the chunk's two groups of 32
//     (scaling a BF16 by 2^k adds k to its exponent). The low nibbles are the even weights, the
//     high ones the odd weights, and the activations are split the same way.
#include "engine/cpu/linear_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) &&      \
    defined(__AVX512DQ__) && defined(__AVX512VBMI__) && defined(__AVX512BF16__) && \
    defined(__FMA__) && defined(__F16C__)

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and trip -Wuninitialized
// (GCC bug 105593); the values are fully overwritten.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstring>

namespace strata::engine::cpu {
namespace {

// BF16 bits of the E4M3 magnitude code c (0..127); 0x7F is NaN.
constexpr uint16_t E4M3MagnitudeBf16(int c) {
  if (c == 0x7F) return 0x7FC0;
  const int e = c >> 3, m = c & 7;
  if (e == 0) {  // subnormal m·2^-9, normal in BF16
    if (m == 0) return 0;
    const int p = m >= 4 ? 2 : (m >= 2 ? 1 : 0);  // m = 2^p · 1.f
    return static_cast<uint16_t>(((p - 9 + 127) << 7) | (((m - (1 << p)) << (7 - p)) & 0x7F));
  }
  return static_cast<uint16_t>(((e + 120) << 7) | (m << 4));
}

struct E4M3ByteTables {
  uint8_t high[128];
  uint8_t low[128];
};

constexpr E4M3ByteTables MakeE4M3ByteTables() {
  E4M3ByteTables t{};
  for (int c = 0; c < 128; ++c) {
    t.high[c] = static_cast<uint8_t>(E4M3MagnitudeBf16(c) >> 8);
    t.low[c] = static_cast<uint8_t>(E4M3MagnitudeBf16(c) & 0xFF);
  }
  return t;
}

alignas(64) constexpr E4M3ByteTables kE4M3Bf16 = MakeE4M3ByteTables();

// BF16 of the 16 E2M1 values, twice (one copy per group of 32 weights in a chunk of 64).
alignas(64) constexpr uint16_t kE2M1Bf16x2[32] = {
    0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0, 0x8000, 0xBF00, 0xBF80,
    0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0, 0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040,
    0x4080, 0x40C0, 0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0};
constexpr __mmask32 kE2M1NonZero = 0xFEFEFEFEu;  // entries 0 and 8 (±0) of each copy

// Activation order for E4M3 (vpunpck{l,h}bw): word 8L + j of the first vector is weight 16L + j,
// of the second weight 16L + 8 + j (L = 128-bit lane, j < 8), indices into 64 words.
alignas(64) constexpr uint16_t kFp8OrderA[32] = {0,  1,  2,  3,  4,  5,  6,  7,  16, 17, 18,
                                                 19, 20, 21, 22, 23, 32, 33, 34, 35, 36, 37,
                                                 38, 39, 48, 49, 50, 51, 52, 53, 54, 55};
alignas(64) constexpr uint16_t kFp8OrderB[32] = {8,  9,  10, 11, 12, 13, 14, 15, 24, 25, 26,
                                                 27, 28, 29, 30, 31, 40, 41, 42, 43, 44, 45,
                                                 46, 47, 56, 57, 58, 59, 60, 61, 62, 63};
// Activation order for E2M1: even weights, then odd weights.
alignas(64) constexpr uint16_t kFp4OrderA[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20,
                                                 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42,
                                                 44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
alignas(64) constexpr uint16_t kFp4OrderB[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

bool ScaleOk(uint8_t e) { return e >= kBf16MinScale && e <= kBf16MaxScale; }

__mmask16 Mask16(int64_t remaining) {
  return remaining >= 16  ? static_cast<__mmask16>(0xFFFF)
         : remaining <= 0 ? static_cast<__mmask16>(0)
                          : static_cast<__mmask16>((1u << remaining) - 1u);
}

__m512bh AsBf16(__m512i v) { return reinterpret_cast<__m512bh>(v); }
__m512i AsInt(__m512bh v) { return reinterpret_cast<__m512i>(v); }

// 64 activations (FP32, zero past `valid`) times `factor` as BF16 in the order orderA/orderB.
void StoreChunk(const float* x, int64_t valid, __m512 factor, __m512i order_a, __m512i order_b,
                uint16_t* out) {
  __m512 v[4];
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm512_mul_ps(_mm512_maskz_loadu_ps(Mask16(valid - 16 * j), x + 16 * j), factor);
  }
  const __m512i n0 = AsInt(_mm512_cvtne2ps_pbh(v[1], v[0]));  // exact: BF16-representable
  const __m512i n1 = AsInt(_mm512_cvtne2ps_pbh(v[3], v[2]));
  _mm512_storeu_si512(out, _mm512_permutex2var_epi16(n0, order_a, n1));
  _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi16(n0, order_b, n1));
}

// ---- dot form: activations -------------------------------------------------------------------

bool PrepareFp8(const float* xq, int64_t ldx, int64_t n, int64_t cols, const uint8_t* scales,
                uint16_t* xb, int64_t ldxb) {
  const int64_t blocks = (cols + kQuantBlock - 1) / kQuantBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    if (!ScaleOk(scales[b])) return false;
  }
  const __m512i order_a = _mm512_load_si512(kFp8OrderA);
  const __m512i order_b = _mm512_load_si512(kFp8OrderB);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < cols; k += 64) {
      const __m512 factor =
          _mm512_set1_ps(FromBits(static_cast<uint32_t>(scales[k / kQuantBlock]) << 23));
      StoreChunk(xq + i * ldx + k, cols - k, factor, order_a, order_b, xb + i * ldxb + k);
    }
  }
  return true;
}

void PrepareFp4(const float* xq, int64_t ldx, int64_t n, int64_t cols, uint16_t* xb, int64_t ldxb) {
  const __m512i order_a = _mm512_load_si512(kFp4OrderA);
  const __m512i order_b = _mm512_load_si512(kFp4OrderB);
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < cols; k += 64) {
      StoreChunk(xq + i * ldx + k, cols - k, one, order_a, order_b, xb + i * ldxb + k);
    }
  }
}

void PreparePlain(const float* xq, int64_t ldx, int64_t n, int64_t cols, uint16_t* xb,
                  int64_t ldxb) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < cols; k += 32) {
      const float* x = xq + i * ldx + k;
      const __m512 v0 = _mm512_maskz_loadu_ps(Mask16(cols - k), x);
      const __m512 v1 = _mm512_maskz_loadu_ps(Mask16(cols - k - 16), x + 16);
      _mm512_storeu_si512(xb + i * ldxb + k, AsInt(_mm512_cvtne2ps_pbh(v1, v0)));
    }
  }
}

// ---- dot form: running sums --------------------------------------------------------------------

// A tile's sums may be carried across column ranges (state: MR·NX vectors): the same operations in
// the same order as one pass over all columns, so the results do not depend on the ranges.
__m512 LoadState(int64_t k_begin, const float* state, int j) {
  return k_begin == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(state + 16 * j);
}

void SaveState(__m512 acc, bool last, float* state, int j, float* y) {
  if (last) {
    *y += _mm512_reduce_add_ps(acc);
  } else {
    _mm512_storeu_ps(state + 16 * j, acc);
  }
}

// ---- dot form: BF16 --------------------------------------------------------------------------

template <int MR, int NX>
void DotBf16Tile(const uint16_t* w, int64_t cols, int64_t k_begin, int64_t k_end,
                 const uint16_t* xb, int64_t ldxb, float* state, float* y, int64_t ldy) {
  __m512 acc[MR][NX];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) acc[m][i] = LoadState(k_begin, state, m * NX + i);
  }
  for (int64_t k = k_begin; k < k_end; k += 32) {
    const int64_t valid = cols - k;
    const __mmask32 mask = valid >= 32 ? ~__mmask32{0} : (__mmask32{1} << valid) - 1;
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      // One cache line (32 BF16 values) of the next tile's row each step.
      _mm_prefetch(reinterpret_cast<const char*>(w + (MR + m) * cols + k), _MM_HINT_T1);
      const __m512bh wv = AsBf16(_mm512_maskz_loadu_epi16(mask, w + m * cols + k));
#pragma GCC unroll 16
      for (int i = 0; i < NX; ++i) {
        acc[m][i] = _mm512_dpbf16_ps(acc[m][i], wv, AsBf16(_mm512_loadu_si512(xb + i * ldxb + k)));
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      SaveState(acc[m][i], k_end == cols, state, m * NX + i, y + i * ldy + m);
    }
  }
}

// ---- dot form: FP8 ---------------------------------------------------------------------------

template <int MR, int NX>
void DotFp8Tile(const uint8_t* w, int64_t cols, int64_t k_begin, int64_t k_end, const uint16_t* xb,
                int64_t ldxb, float* state, float* y, int64_t ldy) {
  const __m512i high0 = _mm512_load_si512(kE4M3Bf16.high);
  const __m512i high1 = _mm512_load_si512(kE4M3Bf16.high + 64);
  const __m512i low0 = _mm512_load_si512(kE4M3Bf16.low);
  const __m512i low1 = _mm512_load_si512(kE4M3Bf16.low + 64);
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[MR][NX];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) acc[m][i] = LoadState(k_begin, state, m * NX + i);
  }
  for (int64_t k = k_begin; k < k_end; k += 64) {
    const int64_t valid = cols - k;
    const __mmask64 mask = valid >= 64 ? ~__mmask64{0} : (__mmask64{1} << valid) - 1;
    __m512bh wa[MR], wb[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (MR + m) * cols + k), _MM_HINT_T1);
      const __m512i raw = _mm512_maskz_loadu_epi8(mask, w + m * cols + k);
      __m512i high = _mm512_permutex2var_epi8(high0, raw, high1);
      high = _mm512_ternarylogic_epi32(high, raw, sign, 0xF8);  // high | (raw & 0x80)
      const __m512i low = _mm512_permutex2var_epi8(low0, raw, low1);
      wa[m] = AsBf16(_mm512_unpacklo_epi8(low, high));
      wb[m] = AsBf16(_mm512_unpackhi_epi8(low, high));
    }
    // Each activation vector is loaded once for all MR rows.
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      const __m512bh xa = AsBf16(_mm512_loadu_si512(xb + i * ldxb + k));
      const __m512bh xc = AsBf16(_mm512_loadu_si512(xb + i * ldxb + k + 32));
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        acc[m][i] = _mm512_dpbf16_ps(acc[m][i], wa[m], xa);
        acc[m][i] = _mm512_dpbf16_ps(acc[m][i], wb[m], xc);
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      SaveState(acc[m][i], k_end == cols, state, m * NX + i, y + i * ldy + m);
    }
  }
}

// ---- dot form: FP4 ---------------------------------------------------------------------------

// For chunk c of a block of 256 weights: words 0..15 pick scale group 2c, words 16..31 group 2c+1.
struct GroupPick {
  uint16_t words[4][32];
};
constexpr GroupPick MakeGroupPick() {
  GroupPick p{};
  for (int c = 0; c < 4; ++c) {
    for (int j = 0; j < 32; ++j) p.words[c][j] = static_cast<uint16_t>(2 * c + (j >= 16));
  }
  return p;
}
alignas(64) constexpr GroupPick kGroupPick = MakeGroupPick();

template <int MR, int NX>
void DotFp4Tile(const uint8_t* w, const uint8_t* scales, int64_t cols, int64_t k_begin,
                int64_t k_end, const uint16_t* xb, int64_t ldxb, float* state, float* y,
                int64_t ldy) {
  const int64_t ldw = cols / 2, lds = cols / kFp4Group;
  const __m512i base = _mm512_load_si512(kE2M1Bf16x2);
  const __m512i nibble = _mm512_set1_epi16(0x000F);
  const __m512i bias = _mm512_set1_epi16(127);
  // Words 16..31 come from the chunk's second group: index the second copy of the table.
  const __m512i upper = _mm512_mask_set1_epi16(_mm512_setzero_si512(), 0xFFFF0000u, 16);
  __m512 acc[MR][NX];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) acc[m][i] = LoadState(k_begin, state, m * NX + i);
  }
  for (int64_t k0 = k_begin; k0 < k_end; k0 += 256) {  // k_begin % 256 == 0
    // The exponent offsets (e - 127) << 7 of the block's 8 scale groups, one word each.
    const int64_t groups = (cols - k0) / kFp4Group;  // cols % 32 == 0
    const __mmask16 group_mask = groups >= 8 ? 0xFF : static_cast<__mmask16>((1u << groups) - 1);
    __m512i offsets[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m128i e = _mm_maskz_loadu_epi8(group_mask, scales + m * lds + k0 / kFp4Group);
      offsets[m] = _mm512_slli_epi16(
          _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_zextsi128_si256(e)), bias), 7);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const int64_t k = k0 + 64 * c;
      if (k >= k_end) break;
      const bool full = k + 64 <= cols;  // else 32 weights
      const __m512i pick = _mm512_load_si512(kGroupPick.words[c]);
      __m512bh wa[MR], wb[MR];
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        // The 16 values times each group's scale: add the offset to the nonzero entries.
        const __m512i table = _mm512_mask_add_epi16(base, kE2M1NonZero, base,
                                                    _mm512_permutexvar_epi16(pick, offsets[m]));
        // The rows of the next tile are the next bytes in memory: fetch them a tile ahead (the
        // hardware prefetchers follow MR short interleaved streams poorly).
        _mm_prefetch(reinterpret_cast<const char*>(w + (MR + m) * ldw + k / 2), _MM_HINT_T1);
        const __m256i raw =
            _mm256_maskz_loadu_epi8(full ? 0xFFFFFFFFu : 0x0000FFFFu, w + m * ldw + k / 2);
        const __m512i words = _mm512_cvtepu8_epi16(raw);
        const __m512i even = _mm512_ternarylogic_epi32(words, nibble, upper, 0xEA);  // (a&b)|c
        const __m512i odd = _mm512_or_si512(_mm512_srli_epi16(words, 4), upper);
        wa[m] = AsBf16(_mm512_permutexvar_epi16(even, table));
        wb[m] = AsBf16(_mm512_permutexvar_epi16(odd, table));
      }
      // Each activation vector is loaded once for all MR rows.
#pragma GCC unroll 16
      for (int i = 0; i < NX; ++i) {
        const __m512bh xa = AsBf16(_mm512_loadu_si512(xb + i * ldxb + k));
        const __m512bh xc = AsBf16(_mm512_loadu_si512(xb + i * ldxb + k + 32));
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          acc[m][i] = _mm512_dpbf16_ps(acc[m][i], wa[m], xa);
          acc[m][i] = _mm512_dpbf16_ps(acc[m][i], wb[m], xc);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      SaveState(acc[m][i], k_end == cols, state, m * NX + i, y + i * ldy + m);
    }
  }
}

// ---- dispatch on the tile shape (mr·nx <= 16, nx <= 8) -------------------------------------

template <template <int, int> class Tile, int MR>
struct ByXRows {
  template <typename... Args>
  static void Run(int nx, Args... args) {
    switch (nx) {
      case 1:
        return Tile<MR, 1>::Run(args...);
      case 2:
        return Tile<MR, 2>::Run(args...);
      case 3:
        return Tile<MR, 3>::Run(args...);
      case 4:
        return Tile<MR, 4>::Run(args...);
      default:
        break;
    }
    if constexpr (MR <= 2) {
      switch (nx) {
        case 5:
          return Tile<MR, 5>::Run(args...);
        case 6:
          return Tile<MR, 6>::Run(args...);
        case 7:
          return Tile<MR, 7>::Run(args...);
        default:
          return Tile<MR, 8>::Run(args...);
      }
    }
  }
};

template <template <int, int> class Tile, typename... Args>
void RunTile(int mr, int nx, Args... args) {
  switch (mr) {
    case 1:
      return ByXRows<Tile, 1>::Run(nx, args...);
    case 2:
      return ByXRows<Tile, 2>::Run(nx, args...);
    case 3:
      return ByXRows<Tile, 3>::Run(nx, args...);
    default:
      return ByXRows<Tile, 4>::Run(nx, args...);
  }
}

template <int MR, int NX>
struct Fp8Tile {
  static void Run(const uint8_t* w, int64_t cols, int64_t k_begin, int64_t k_end,
                  const uint16_t* xb, int64_t ldxb, float* state, float* y, int64_t ldy) {
    DotFp8Tile<MR, NX>(w, cols, k_begin, k_end, xb, ldxb, state, y, ldy);
  }
};

template <int MR, int NX>
struct Fp4Tile {
  static void Run(const uint8_t* w, const uint8_t* scales, int64_t cols, int64_t k_begin,
                  int64_t k_end, const uint16_t* xb, int64_t ldxb, float* state, float* y,
                  int64_t ldy) {
    DotFp4Tile<MR, NX>(w, scales, cols, k_begin, k_end, xb, ldxb, state, y, ldy);
  }
};

template <int MR, int NX>
struct Bf16Tile {
  static void Run(const uint16_t* w, int64_t cols, int64_t k_begin, int64_t k_end,
                  const uint16_t* xb, int64_t ldxb, float* state, float* y, int64_t ldy) {
    DotBf16Tile<MR, NX>(w, cols, k_begin, k_end, xb, ldxb, state, y, ldy);
  }
};

void DotBf16(const uint16_t* w, int64_t cols, int64_t k_begin, int64_t k_end, int mr,
             const uint16_t* xb, int64_t ldxb, int nx, float* state, float* y, int64_t ldy) {
  RunTile<Bf16Tile>(mr, nx, w, cols, k_begin, k_end, xb, ldxb, state, y, ldy);
}

void DotFp8(const uint8_t* w, int64_t cols, int64_t k_begin, int64_t k_end, int mr,
            const uint16_t* xb, int64_t ldxb, int nx, float* state, float* y, int64_t ldy) {
  RunTile<Fp8Tile>(mr, nx, w, cols, k_begin, k_end, xb, ldxb, state, y, ldy);
}

bool DotFp4(const uint8_t* w, const uint8_t* scales, int64_t cols, int64_t k_begin, int64_t k_end,
            int mr, const uint16_t* xb, int64_t ldxb, int nx, float* state, float* y, int64_t ldy) {
  const int64_t lds = cols / kFp4Group;
  const __m512i lo = _mm512_set1_epi8(kBf16MinScale),
                hi = _mm512_set1_epi8(static_cast<char>(kBf16MaxScale));
  for (int m = 0; m < mr; ++m) {
    for (int64_t g = 0; g < lds; g += 64) {
      const int64_t valid = lds - g;
      const __mmask64 mask = valid >= 64 ? ~__mmask64{0} : (__mmask64{1} << valid) - 1;
      const __m512i s = _mm512_maskz_loadu_epi8(mask, scales + m * lds + g);
      if ((_mm512_mask_cmplt_epu8_mask(mask, s, lo) | _mm512_mask_cmpgt_epu8_mask(mask, s, hi)) !=
          0) {
        return false;
      }
    }
  }
  RunTile<Fp4Tile>(mr, nx, w, scales, cols, k_begin, k_end, xb, ldxb, state, y, ldy);
  return true;
}

// ---- strip form --------------------------------------------------------------------------------

constexpr int kStripRows = 32;
constexpr int kStripXRows = 12;

// In-register transpose of 16 rows of 16 dwords (as in linear_avx512.cc).
void Transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
    const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
    const __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
    const __m512 cc = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    const __m512 d = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    t[c] = _mm512_shuffle_f32x4(a, cc, 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(a, cc, 0xDD);
    t[8 + c] = _mm512_shuffle_f32x4(b, d, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(b, d, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// 32 FP32 -> 16 BF16 pairs (natural order; exact for the values the strip form sees).
__m512 PairsOf(const float* p) {
  return _mm512_castsi512_ps(
      AsInt(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p))));
}

void PackX(const float* xq, int64_t ldx, int nx, int64_t cols, uint32_t* xpack) {
  const int64_t pairs = RoundUp(cols, kPadFloats) / 2;
  alignas(64) uint32_t tmp[16];
  for (int i = 0; i < kStripXRows; ++i) {
    if (i >= nx) {
      for (int64_t p = 0; p < pairs; ++p) xpack[p * kStripXRows + i] = 0;
      continue;
    }
    for (int64_t p = 0; p < pairs; p += 16) {
      _mm512_store_ps(reinterpret_cast<float*>(tmp), PairsOf(xq + i * ldx + 2 * p));
      for (int j = 0; j < 16; ++j) xpack[(p + j) * kStripXRows + i] = tmp[j];
    }
  }
}

void PackStrip(const float* panel, int64_t ldp, int64_t kc, uint32_t* strip) {
  for (int64_t p = 0; p < kc / 2; p += 16) {
    for (int half = 0; half < kStripRows; half += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = PairsOf(panel + (half + i) * ldp + 2 * p);
      Transpose16(r);
      for (int j = 0; j < 16; ++j) {
        _mm512_storeu_ps(reinterpret_cast<float*>(strip + (p + j) * kStripRows + half), r[j]);
      }
    }
  }
}

template <int NX>
void StripTile(const uint32_t* strip, const uint32_t* xpack, int64_t pairs, int rows, float* y,
               int64_t ldy) {
  __m512 acc0[NX], acc1[NX];
#pragma GCC unroll 16
  for (int i = 0; i < NX; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh w0 = AsBf16(_mm512_loadu_si512(strip + p * kStripRows));
    const __m512bh w1 = AsBf16(_mm512_loadu_si512(strip + p * kStripRows + 16));
    const uint32_t* xp = xpack + p * kStripXRows;
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      const __m512bh b = AsBf16(_mm512_set1_epi32(static_cast<int>(xp[i])));
      acc0[i] = _mm512_dpbf16_ps(acc0[i], w0, b);
      acc1[i] = _mm512_dpbf16_ps(acc1[i], w1, b);
    }
  }
  const __mmask16 m0 = Mask16(rows), m1 = Mask16(rows - 16);
#pragma GCC unroll 16
  for (int i = 0; i < NX; ++i) {
    float* yi = y + i * ldy;
    _mm512_mask_storeu_ps(yi, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, yi), acc0[i]));
    _mm512_mask_storeu_ps(yi + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, yi + 16), acc1[i]));
  }
}

void Strip(const uint32_t* strip, const uint32_t* xpack, int64_t pairs, int nx, int rows, float* y,
           int64_t ldy) {
  switch (nx) {
    case 1:
      return StripTile<1>(strip, xpack, pairs, rows, y, ldy);
    case 2:
      return StripTile<2>(strip, xpack, pairs, rows, y, ldy);
    case 3:
      return StripTile<3>(strip, xpack, pairs, rows, y, ldy);
    case 4:
      return StripTile<4>(strip, xpack, pairs, rows, y, ldy);
    case 5:
      return StripTile<5>(strip, xpack, pairs, rows, y, ldy);
    case 6:
      return StripTile<6>(strip, xpack, pairs, rows, y, ldy);
    case 7:
      return StripTile<7>(strip, xpack, pairs, rows, y, ldy);
    case 8:
      return StripTile<8>(strip, xpack, pairs, rows, y, ldy);
    case 9:
      return StripTile<9>(strip, xpack, pairs, rows, y, ldy);
    case 10:
      return StripTile<10>(strip, xpack, pairs, rows, y, ldy);
    case 11:
      return StripTile<11>(strip, xpack, pairs, rows, y, ldy);
    default:
      return StripTile<12>(strip, xpack, pairs, rows, y, ldy);
  }
}

constexpr Bf16KernelTable kTable = {
    .name = "avx512bf16",
    .prepare_fp8 = PrepareFp8,
    .prepare_fp4 = PrepareFp4,
    .dot_fp8 = DotFp8,
    .dot_fp4 = DotFp4,
    .prepare_plain = PreparePlain,
    .dot_bf16 = DotBf16,
    .pack_x = PackX,
    .pack_strip = PackStrip,
    .strip = Strip,
    .strip_rows = kStripRows,
    .strip_xrows = kStripXRows,
    .strip_min_n = 128,
};

}  // namespace

const Bf16KernelTable* Avx512Bf16LinearKernels() { return &kTable; }

}  // namespace strata::engine::cpu

#else  // not built for AVX512-BF16 (e.g. a non-x86 target)

namespace strata::engine::cpu {
const Bf16KernelTable* Avx512Bf16LinearKernels() { return nullptr; }
}  // namespace strata::engine::cpu

#endif
