// AVX2 linear kernels (with FMA and F16C). Compiled with -mavx2 -mfma -mf16c and run only where
// the CPU has them (CpuBackend checks); see linear_kernels.h for why everything here has internal
// linkage and no standard-library templates are used.
//
// Dequantisation, in registers:
//   E4M3: as in linear_avx512.cc: (sign-extended byte << 7) & 0xBFFF is the FP16 of value·2^-8,
//     widened exactly by vcvtph2ps; 2^8 is folded into the block scale; blocks holding one of the
//     NaN codes are decoded by the table.
//   E2M1: vpshufb maps each nibble to the int8 2·e2m1 (0, ±1, ±2, ±3, ±4, ±6, ±8, ±12), which is
//     widened, converted and multiplied by scale/2 (all exact).
#include "engine/cpu/linear_kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#include <cstring>

namespace strata::engine::cpu {
namespace {

int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

float Ue8m0(uint8_t e) {
  if (e == 0xFF) return FromBits(0x7FC00000u);
  if (e == 0) return FromBits(0x00400000u);
  return FromBits(static_cast<uint32_t>(e) << 23);
}

float Pow2(int e) { return FromBits(static_cast<uint32_t>(e + 127) << 23); }

float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 floats from x[0, len) (len <= 8), zero past len.
__m256 LoadPartial(const float* x, int64_t len) {
  if (len >= 8) return _mm256_loadu_ps(x);
  float tmp[8] = {};
  std::memcpy(tmp, x, static_cast<size_t>(len) * sizeof(float));
  return _mm256_loadu_ps(tmp);
}

// ---- activation quantization -------------------------------------------------------------------

void QuantizeRow(const float* x, int64_t cols, float* xq, uint8_t* codes, int8_t* exps) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i sign_mask = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256 max_value = _mm256_set1_ps(448.0f);
  const __m256 min_normal = _mm256_set1_ps(0.015625f);  // 2^-6
  const __m256 sub_scale = _mm256_set1_ps(512.0f);
  const __m256 sub_quantum = _mm256_set1_ps(1.0f / 512.0f);
  const __m256i round_bias = _mm256_set1_epi32(0x7FFFF);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i keep = _mm256_set1_epi32(static_cast<int>(0xFFF00000u));
  const __m256i code_bias = _mm256_set1_epi32(120 << 3);
  for (int64_t b0 = 0, blk = 0; b0 < cols; b0 += kQuantBlock, ++blk) {
    const int64_t len = Min(kQuantBlock, cols - b0);
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t k = 0; k < len; k += 8) {
      vmax = _mm256_max_ps(vmax, _mm256_and_ps(LoadPartial(x + b0 + k, len - k), abs_mask));
    }
    const int e = ActivationScaleExponent(HorizontalMax(vmax));
    exps[blk] = static_cast<int8_t>(e);
    const __m256 inv_scale = _mm256_set1_ps(Pow2(-e));
    const __m256 scale = _mm256_set1_ps(Pow2(e));
    for (int64_t k = 0; k < len; k += 8) {
      const __m256 v = _mm256_mul_ps(LoadPartial(x + b0 + k, len - k), inv_scale);
      const __m256i sign = _mm256_and_si256(_mm256_castps_si256(v), sign_mask);
      const __m256 a = _mm256_min_ps(_mm256_and_ps(v, abs_mask), max_value);
      __m256i u = _mm256_castps_si256(a);
      u = _mm256_add_epi32(
          u, _mm256_add_epi32(round_bias, _mm256_and_si256(_mm256_srli_epi32(u, 20), one)));
      u = _mm256_and_si256(u, keep);
      const __m256i code_normal = _mm256_sub_epi32(_mm256_srli_epi32(u, 20), code_bias);
      // Round explicitly (not under MXCSR), then the conversion is exact.
      const __m256 sub_rounded = _mm256_round_ps(_mm256_mul_ps(a, sub_scale),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256i code_sub = _mm256_cvttps_epi32(sub_rounded);
      const __m256 sub = _mm256_cmp_ps(a, min_normal, _CMP_LT_OQ);
      const __m256i code = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(code_normal), _mm256_castsi256_ps(code_sub), sub));
      const __m256 magnitude =
          _mm256_blendv_ps(_mm256_castsi256_ps(u), _mm256_mul_ps(sub_rounded, sub_quantum), sub);
      const __m256 value =
          _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(magnitude), sign));
      _mm256_storeu_ps(xq + b0 + k, _mm256_mul_ps(value, scale));  // lanes past cols are 0
      if (codes != nullptr) {
        int32_t c[8];
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c),
                            _mm256_or_si256(code, _mm256_srli_epi32(sign, 24)));
        for (int64_t j = 0; j < Min(8, len - k); ++j)
          codes[b0 + k + j] = static_cast<uint8_t>(c[j]);
      }
    }
  }
  for (int64_t k = RoundUp(cols, 8); k < RoundUp(cols, kPadFloats); ++k) xq[k] = 0.0f;
}

// ---- weight decoding ---------------------------------------------------------------------------

void DecodeF32Row(const float* src, int64_t kc, float* out) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) _mm256_storeu_ps(out + k, _mm256_loadu_ps(src + k));
  for (; k < kc; ++k) out[k] = src[k];
}

void DecodeBf16Row(const uint16_t* src, int64_t kc, float* out) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    const __m256i h =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
    _mm256_storeu_ps(out + k, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
  }
  for (; k < kc; ++k) out[k] = FromBits(static_cast<uint32_t>(src[k]) << 16);
}

void DecodeFp8Scalar(const uint8_t* src, int64_t len, float scale, float* out) {
  for (int64_t k = 0; k < len; ++k) out[k] = E4M3ToFloatOutOfLine(src[k]) * scale;
}

bool HasE4M3Nan(const uint8_t* src) {  // 128 bytes
  const __m256i high = _mm256_set1_epi8(-128), all = _mm256_set1_epi8(-1);
  __m256i any = _mm256_setzero_si256();
  for (int k = 0; k < 128; k += 32) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k));
    any = _mm256_or_si256(any, _mm256_cmpeq_epi8(_mm256_or_si256(b, high), all));
  }
  return _mm256_movemask_epi8(any) != 0;
}

void DecodeFp8Row(const uint8_t* src, const uint8_t* scales, int64_t k0, int64_t kc, float* out) {
  const __m256i clear14 = _mm256_set1_epi16(static_cast<short>(0xBFFF));
  for (int64_t kb = 0; kb < kc; kb += kQuantBlock) {
    const int64_t len = Min(kQuantBlock, kc - kb);
    const uint8_t e = scales[(k0 + kb) / kQuantBlock];
    const float scale = Ue8m0(e);
    if (len < kQuantBlock || e > 246 || HasE4M3Nan(src + kb)) {
      DecodeFp8Scalar(src + kb, len, scale, out + kb);
      continue;
    }
    const __m256 factor = _mm256_set1_ps(scale * 256.0f);
    for (int64_t k = kb; k < kb + kQuantBlock; k += 16) {
      const __m256i w =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
      const __m256i h = _mm256_and_si256(_mm256_slli_epi16(w, 7), clear14);
      _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), factor));
      _mm256_storeu_ps(out + k + 8,
                       _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), factor));
    }
  }
}

void DecodeFp4Row(const uint8_t* src, const uint8_t* scales, int64_t k0, int64_t kc, float* out) {
  // 2·E2M1 as int8, indexed by the nibble; one copy per 128-bit lane for vpshufb.
  const __m256i twice = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12, 0,
                                         1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  const __m256i low_nibbles = _mm256_set1_epi16(0x0F0F);
  for (int64_t k = 0; k < kc; k += kFp4Group) {  // kc % 32 == 0 (cols % 32 == 0)
    const __m256 half_scale = _mm256_set1_ps(Ue8m0(scales[(k0 + k) / kFp4Group]) * 0.5f);
    const __m256i w =
        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (k0 + k) / 2)));
    const __m256i nib = _mm256_and_si256(_mm256_or_si256(w, _mm256_slli_epi16(w, 4)), low_nibbles);
    const __m256i v = _mm256_shuffle_epi8(twice, nib);  // in element order
    const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int j = 0; j < 4; ++j) {
      const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[j]));
      _mm256_storeu_ps(out + k + 8 * j, _mm256_mul_ps(f, half_scale));
    }
  }
}

void Decode(const KernelWeights& w, int64_t r0, int64_t nrows, int64_t k0, int64_t kc, float* panel,
            int64_t ldp) {
  const int64_t padded = RoundUp(kc, kPadFloats);
  const int64_t scale_cols = (w.cols + kQuantBlock - 1) / kQuantBlock;
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t r = r0 + i;
    float* out = panel + i * ldp;
    switch (w.format) {
      case KernelFormat::kF32:
        DecodeF32Row(static_cast<const float*>(w.data) + r * w.cols + k0, kc, out);
        break;
      case KernelFormat::kBf16:
        DecodeBf16Row(static_cast<const uint16_t*>(w.data) + r * w.cols + k0, kc, out);
        break;
      case KernelFormat::kFp8Block:
        DecodeFp8Row(static_cast<const uint8_t*>(w.data) + r * w.cols + k0,
                     w.scale + (r / kQuantBlock) * scale_cols, k0, kc, out);
        break;
      case KernelFormat::kFp4Block:
        DecodeFp4Row(static_cast<const uint8_t*>(w.data) + r * (w.cols / 2),
                     w.scale + r * (w.cols / kFp4Group), k0, kc, out);
        break;
    }
    for (int64_t k = kc; k < padded; ++k) out[k] = 0.0f;
  }
}

// ---- dot form ----------------------------------------------------------------------------------

constexpr int kDotRows = 4;
constexpr int kDotXRows = 2;

template <int MR, int NX>
void DotTile(const float* panel, int64_t ldp, const float* x, int64_t ldx, int64_t kc, float* y,
             int64_t ldy) {
  __m256 acc[MR][NX];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) acc[m][i] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; k += 8) {
    __m256 w[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) w[m] = _mm256_loadu_ps(panel + m * ldp + k);
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) acc[m][i] = _mm256_fmadd_ps(w[m], xv, acc[m][i]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) y[i * ldy + m] += HorizontalSum(acc[m][i]);
  }
}

template <int MR>
void DotRows(const float* panel, int64_t ldp, const float* x, int64_t ldx, int nx, int64_t kc,
             float* y, int64_t ldy) {
  if (nx == 1) return DotTile<MR, 1>(panel, ldp, x, ldx, kc, y, ldy);
  return DotTile<MR, 2>(panel, ldp, x, ldx, kc, y, ldy);
}

void Dot(const float* panel, int64_t ldp, int mr, const float* x, int64_t ldx, int nx, int64_t kc,
         float* y, int64_t ldy) {
  switch (mr) {
    case 1:
      return DotRows<1>(panel, ldp, x, ldx, nx, kc, y, ldy);
    case 2:
      return DotRows<2>(panel, ldp, x, ldx, nx, kc, y, ldy);
    case 3:
      return DotRows<3>(panel, ldp, x, ldx, nx, kc, y, ldy);
    default:
      return DotRows<4>(panel, ldp, x, ldx, nx, kc, y, ldy);
  }
}

// ---- strip form --------------------------------------------------------------------------------

constexpr int kStripRows = 16;
constexpr int kStripXRows = 6;

void Transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) {
    s[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
    s[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
    s[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    s[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(s[c], s[c + 4], 0x20);
    r[c + 4] = _mm256_permute2f128_ps(s[c], s[c + 4], 0x31);
  }
}

void PackStrip(const float* panel, int64_t ldp, int64_t kc, float* strip) {
  for (int64_t k = 0; k < kc; k += 8) {
    for (int part = 0; part < kStripRows; part += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(panel + (part + i) * ldp + k);
      Transpose8(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(strip + (k + j) * kStripRows + part, r[j]);
    }
  }
}

template <int NX>
void StripTile(const float* strip, const float* xpack, int64_t kc, int rows, float* y,
               int64_t ldy) {
  __m256 acc0[NX], acc1[NX];
#pragma GCC unroll 16
  for (int i = 0; i < NX; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_loadu_ps(strip + k * kStripRows);
    const __m256 w1 = _mm256_loadu_ps(strip + k * kStripRows + 8);
    const float* xk = xpack + k * kStripXRows;
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      const __m256 b = _mm256_broadcast_ss(xk + i);
      acc0[i] = _mm256_fmadd_ps(w0, b, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(w1, b, acc1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NX; ++i) {
    float* yi = y + i * ldy;
    if (rows == kStripRows) {
      _mm256_storeu_ps(yi, _mm256_add_ps(_mm256_loadu_ps(yi), acc0[i]));
      _mm256_storeu_ps(yi + 8, _mm256_add_ps(_mm256_loadu_ps(yi + 8), acc1[i]));
    } else {
      float tmp[kStripRows];
      _mm256_storeu_ps(tmp, acc0[i]);
      _mm256_storeu_ps(tmp + 8, acc1[i]);
      for (int r = 0; r < rows; ++r) yi[r] += tmp[r];
    }
  }
}

void Strip(const float* strip, const float* xpack, int64_t kc, int nx, int rows, float* y,
           int64_t ldy) {
  switch (nx) {
    case 1:
      return StripTile<1>(strip, xpack, kc, rows, y, ldy);
    case 2:
      return StripTile<2>(strip, xpack, kc, rows, y, ldy);
    case 3:
      return StripTile<3>(strip, xpack, kc, rows, y, ldy);
    case 4:
      return StripTile<4>(strip, xpack, kc, rows, y, ldy);
    case 5:
      return StripTile<5>(strip, xpack, kc, rows, y, ldy);
    default:
      return StripTile<6>(strip, xpack, kc, rows, y, ldy);
  }
}

constexpr LinearKernelTable kAvx2Table = {
    .name = "avx2",
    .quantize_row = QuantizeRow,
    .decode = Decode,
    .dot = Dot,
    .dot_rows = kDotRows,
    .dot_xrows = kDotXRows,
    .pack_strip = PackStrip,
    .strip = Strip,
    .strip_rows = kStripRows,
    .strip_xrows = kStripXRows,
    .strip_min_n = 32,
};

}  // namespace

const LinearKernelTable* Avx2LinearKernels() { return &kAvx2Table; }

}  // namespace strata::engine::cpu

#else  // not built for AVX2 (e.g. a non-x86 target)

namespace strata::engine::cpu {
const LinearKernelTable* Avx2LinearKernels() { return nullptr; }
}  // namespace strata::engine::cpu

#endif
