// AVX-512 (F/BW/VL/DQ) linear kernels. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq
// -mfma -mf16c and run only where the CPU has them (CpuBackend checks); see linear_kernels.h for
// why everything here has internal linkage and no standard-library templates are used.
//
// Dequantisation, per 16 weights, in registers:
//   E4M3: sign-extend the byte to 16 bits and shift left by 7, clearing bit 14: that is the FP16
//     of value·2^-8 (E4M3's exponent field lands in FP16's, its subnormals in FP16 subnormals),
//     which vcvtph2ps widens exactly; the 2^8 is folded into the block scale. The two NaN codes
//     (0x7F, 0xFF) would decode as ±480, so a 128-block containing one is decoded by the table.
//   E2M1: the nibbles are spread to one byte each, widened to 32 bits and looked up with vpermps
//     in the 16-entry table already multiplied by the group's scale.
#include "engine/cpu/linear_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__) && defined(__F16C__)

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

constexpr float kE2M1Table[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                  -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// UE8M0 byte -> 2^(e-127) (0xFF: NaN; 0: the subnormal 2^-127), as Ue8m0ToFloat.
float Ue8m0(uint8_t e) {
  if (e == 0xFF) return FromBits(0x7FC00000u);
  if (e == 0) return FromBits(0x00400000u);
  return FromBits(static_cast<uint32_t>(e) << 23);
}

float Pow2(int e) { return FromBits(static_cast<uint32_t>(e + 127) << 23); }

__mmask16 TailMask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

// ---- activation quantization -------------------------------------------------------------------

void QuantizeRow(const float* x, int64_t cols, float* xq, uint8_t* codes, int8_t* exps) {
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  const __m512i sign_mask = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512 max_value = _mm512_set1_ps(448.0f);
  const __m512 min_normal = _mm512_set1_ps(0.015625f);  // 2^-6
  const __m512 sub_scale = _mm512_set1_ps(512.0f);
  const __m512 sub_quantum = _mm512_set1_ps(1.0f / 512.0f);
  const __m512i round_bias = _mm512_set1_epi32(0x7FFFF);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i keep = _mm512_set1_epi32(static_cast<int>(0xFFF00000u));
  const __m512i code_bias = _mm512_set1_epi32(120 << 3);
  for (int64_t b0 = 0, blk = 0; b0 < cols; b0 += kQuantBlock, ++blk) {
    const int64_t len = Min(kQuantBlock, cols - b0);
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t k = 0; k < len; k += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(TailMask(len - k), x + b0 + k);
      vmax = _mm512_max_ps(vmax, _mm512_and_ps(v, abs_mask));
    }
    const int e = ActivationScaleExponent(_mm512_reduce_max_ps(vmax));
    exps[blk] = static_cast<int8_t>(e);
    const __m512 inv_scale = _mm512_set1_ps(Pow2(-e));
    const __m512 scale = _mm512_set1_ps(Pow2(e));
    for (int64_t k = 0; k < len; k += 16) {
      const __mmask16 tail = TailMask(len - k);
      const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + b0 + k), inv_scale);
      const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), sign_mask);
      const __m512 a = _mm512_min_ps(_mm512_and_ps(v, abs_mask), max_value);
      // Normal E4M3 range: round the FP32 mantissa to 3 bits, to nearest even.
      __m512i u = _mm512_castps_si512(a);
      u = _mm512_add_epi32(
          u, _mm512_add_epi32(round_bias, _mm512_and_si512(_mm512_srli_epi32(u, 20), one)));
      u = _mm512_and_si512(u, keep);
      const __m512i code_normal = _mm512_sub_epi32(_mm512_srli_epi32(u, 20), code_bias);
      // Subnormal range: multiples of 2^-9.
      const __m512i code_sub = _mm512_cvt_roundps_epi32(
          _mm512_mul_ps(a, sub_scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __mmask16 sub = _mm512_cmp_ps_mask(a, min_normal, _CMP_LT_OQ);
      const __m512i code = _mm512_mask_blend_epi32(sub, code_normal, code_sub);
      const __m512 magnitude = _mm512_mask_blend_ps(
          sub, _mm512_castsi512_ps(u), _mm512_mul_ps(_mm512_cvtepi32_ps(code_sub), sub_quantum));
      const __m512 value =
          _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), sign));
      _mm512_storeu_ps(xq + b0 + k, _mm512_mul_ps(value, scale));  // lanes past cols are 0
      if (codes != nullptr) {
        const __m512i byte = _mm512_or_si512(code, _mm512_srli_epi32(sign, 24));
        _mm_mask_storeu_epi8(codes + b0 + k, tail, _mm512_cvtepi32_epi8(byte));
      }
    }
  }
  for (int64_t k = RoundUp(cols, 16); k < RoundUp(cols, kPadFloats); ++k) xq[k] = 0.0f;
}

// ---- weight decoding ---------------------------------------------------------------------------

void DecodeF32Row(const float* src, int64_t kc, float* out) {
  for (int64_t k = 0; k < kc; k += 16) {
    const __mmask16 m = TailMask(kc - k);
    _mm512_storeu_ps(out + k, _mm512_maskz_loadu_ps(m, src + k));
  }
}

void DecodeBf16Row(const uint16_t* src, int64_t kc, float* out) {
  for (int64_t k = 0; k < kc; k += 16) {
    const __m256i h = _mm256_maskz_loadu_epi16(TailMask(kc - k), src + k);
    _mm512_storeu_ps(out + k, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
}

void DecodeFp8Scalar(const uint8_t* src, int64_t len, float scale, float* out) {
  for (int64_t k = 0; k < len; ++k) out[k] = E4M3ToFloatOutOfLine(src[k]) * scale;
}

// 32 E4M3 bytes -> 32 floats times `factor` (= block scale · 2^8, see the top of the file).
void DecodeFp8x32(const uint8_t* src, __m512 factor, float* out) {
  const __m512i h = _mm512_and_si512(
      _mm512_slli_epi16(
          _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))), 7),
      _mm512_set1_epi16(static_cast<short>(0xBFFF)));
  _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), factor));
  _mm512_storeu_ps(out + 16,
                   _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), factor));
}

bool HasE4M3Nan(__m512i bytes) {
  // (b | 0x80) == 0xFF exactly for the NaN codes 0x7F and 0xFF.
  const __m512i all = _mm512_set1_epi8(-1);
  return _mm512_cmpeq_epi8_mask(_mm512_or_si512(bytes, _mm512_set1_epi8(-128)), all) != 0;
}

void DecodeFp8Row(const uint8_t* src, const uint8_t* scales, int64_t k0, int64_t kc, float* out) {
  for (int64_t kb = 0; kb < kc; kb += kQuantBlock) {
    const int64_t len = Min(kQuantBlock, kc - kb);
    const uint8_t e = scales[(k0 + kb) / kQuantBlock];
    const float scale = Ue8m0(e);
    if (len < kQuantBlock || e > 246) {  // partial block, or scale·2^8 would overflow
      DecodeFp8Scalar(src + kb, len, scale, out + kb);
      continue;
    }
    const __m512i lo = _mm512_loadu_si512(src + kb);
    const __m512i hi = _mm512_loadu_si512(src + kb + 64);
    if (HasE4M3Nan(lo) || HasE4M3Nan(hi)) {
      DecodeFp8Scalar(src + kb, len, scale, out + kb);
      continue;
    }
    const __m512 factor = _mm512_set1_ps(scale * 256.0f);
    for (int64_t k = 0; k < kQuantBlock; k += 32) DecodeFp8x32(src + kb + k, factor, out + kb + k);
  }
}

void DecodeFp4Row(const uint8_t* src, const uint8_t* scales, int64_t k0, int64_t kc, float* out) {
  const __m512 table = _mm512_loadu_ps(kE2M1Table);
  const __m256i low_nibbles = _mm256_set1_epi16(0x0F0F);
  for (int64_t k = 0; k < kc; k += kFp4Group) {  // kc % 32 == 0 (cols % 32 == 0)
    const __m512 scaled = _mm512_mul_ps(table, _mm512_set1_ps(Ue8m0(scales[(k0 + k) / kFp4Group])));
    const __m256i w =
        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (k0 + k) / 2)));
    // Byte 2i = low nibble of packed byte i, byte 2i+1 = its high nibble: element order.
    const __m256i nib = _mm256_and_si256(_mm256_or_si256(w, _mm256_slli_epi16(w, 4)), low_nibbles);
    const __m512i i0 = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(nib));
    const __m512i i1 = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(nib, 1));
    _mm512_storeu_ps(out + k, _mm512_permutexvar_ps(i0, scaled));
    _mm512_storeu_ps(out + k + 16, _mm512_permutexvar_ps(i1, scaled));
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
constexpr int kDotXRows = 6;

template <int MR, int NX>
void DotTile(const float* panel, int64_t ldp, const float* x, int64_t ldx, int64_t kc, float* y,
             int64_t ldy) {
  __m512 acc[MR][NX];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) acc[m][i] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; k += 16) {
    __m512 w[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) w[m] = _mm512_loadu_ps(panel + m * ldp + k);
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) acc[m][i] = _mm512_fmadd_ps(w[m], xv, acc[m][i]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) y[i * ldy + m] += _mm512_reduce_add_ps(acc[m][i]);
  }
}

template <int MR>
void DotRows(const float* panel, int64_t ldp, const float* x, int64_t ldx, int nx, int64_t kc,
             float* y, int64_t ldy) {
  switch (nx) {
    case 1:
      return DotTile<MR, 1>(panel, ldp, x, ldx, kc, y, ldy);
    case 2:
      return DotTile<MR, 2>(panel, ldp, x, ldx, kc, y, ldy);
    case 3:
      return DotTile<MR, 3>(panel, ldp, x, ldx, kc, y, ldy);
    case 4:
      return DotTile<MR, 4>(panel, ldp, x, ldx, kc, y, ldy);
    case 5:
      return DotTile<MR, 5>(panel, ldp, x, ldx, kc, y, ldy);
    default:
      return DotTile<MR, 6>(panel, ldp, x, ldx, kc, y, ldy);
  }
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

constexpr int kStripRows = 32;
constexpr int kStripXRows = 12;

// In-register transpose of 16 rows of 16 floats.
void Transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // r[g + c], lane L: rows g..g+3 of column 4L + c
    const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
    const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int c = 0; c < 4; ++c) {  // 4×4 transpose of 128-bit lanes
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

void PackStrip(const float* panel, int64_t ldp, int64_t kc, float* strip) {
  for (int64_t k = 0; k < kc; k += 16) {
    for (int half = 0; half < kStripRows; half += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(panel + (half + i) * ldp + k);
      Transpose16(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(strip + (k + j) * kStripRows + half, r[j]);
    }
  }
}

template <int NX>
void StripTile(const float* strip, const float* xpack, int64_t kc, int rows, float* y,
               int64_t ldy) {
  __m512 acc0[NX], acc1[NX];
#pragma GCC unroll 16
  for (int i = 0; i < NX; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_loadu_ps(strip + k * kStripRows);
    const __m512 w1 = _mm512_loadu_ps(strip + k * kStripRows + 16);
    const float* xk = xpack + k * kStripXRows;
#pragma GCC unroll 16
    for (int i = 0; i < NX; ++i) {
      const __m512 b = _mm512_set1_ps(xk[i]);
      acc0[i] = _mm512_fmadd_ps(w0, b, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(w1, b, acc1[i]);
    }
  }
  const __mmask16 m0 = TailMask(rows), m1 = TailMask(rows > 16 ? rows - 16 : 0);
#pragma GCC unroll 16
  for (int i = 0; i < NX; ++i) {
    float* yi = y + i * ldy;
    _mm512_mask_storeu_ps(yi, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, yi), acc0[i]));
    _mm512_mask_storeu_ps(yi + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, yi + 16), acc1[i]));
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
    case 6:
      return StripTile<6>(strip, xpack, kc, rows, y, ldy);
    case 7:
      return StripTile<7>(strip, xpack, kc, rows, y, ldy);
    case 8:
      return StripTile<8>(strip, xpack, kc, rows, y, ldy);
    case 9:
      return StripTile<9>(strip, xpack, kc, rows, y, ldy);
    case 10:
      return StripTile<10>(strip, xpack, kc, rows, y, ldy);
    case 11:
      return StripTile<11>(strip, xpack, kc, rows, y, ldy);
    default:
      return StripTile<12>(strip, xpack, kc, rows, y, ldy);
  }
}

constexpr LinearKernelTable kAvx512Table = {
    .name = "avx512",
    .quantize_row = QuantizeRow,
    .decode = Decode,
    .dot = Dot,
    .dot_rows = kDotRows,
    .dot_xrows = kDotXRows,
    .pack_strip = PackStrip,
    .strip = Strip,
    .strip_rows = kStripRows,
    .strip_xrows = kStripXRows,
    .strip_min_n = 64,
};

}  // namespace

const LinearKernelTable* Avx512LinearKernels() { return &kAvx512Table; }

}  // namespace strata::engine::cpu

#else  // not built for AVX-512 (e.g. a non-x86 target)

namespace strata::engine::cpu {
const LinearKernelTable* Avx512LinearKernels() { return nullptr; }
}  // namespace strata::engine::cpu

#endif
