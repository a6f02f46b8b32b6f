// Portable linear kernels: plain C++ that the compiler vectorises for the baseline target. Used
// on CPUs without AVX2 and on non-x86 builds; the same algorithms as the SIMD files, so it also
// documents them.
#include <algorithm>
#include <array>
#include <cstring>

#include "engine/cpu/linear_kernels.h"
#include "engine/numerics.h"

namespace strata::engine::cpu {

float E4M3ToFloatOutOfLine(uint8_t bits) { return E4M3ToFloat(bits); }

int ActivationScaleExponent(float amax) { return PowerOfTwoScaleExponent(amax, kE4M3Max, 1e-4f); }

namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// 2^e for the exponents activation scales take (|e| <= 126).
float Pow2(int e) { return FromBits(static_cast<uint32_t>(e + 127) << 23); }

// E4M3 of |v| (|v| finite) by integer rounding of the FP32 bits; the SIMD files do the same per
// lane. Normals (>= 2^-6) keep 3 mantissa bits, rounded to nearest even; below 2^-6 the quantum
// is 2^-9, so the code is round(|v| · 2^9), where code 8 is also the encoding of 2^-6.
// Returns the code without sign and sets *value to its magnitude.
uint32_t E4M3Magnitude(float a, float* value) {
  a = std::min(a, kE4M3Max);  // the reference saturates
  if (a < 0.015625f) {
    const float code = std::nearbyint(a * 512.0f);
    *value = code * (1.0f / 512.0f);
    return static_cast<uint32_t>(code);
  }
  uint32_t u = Bits(a);
  u += 0x7FFFFu + ((u >> 20) & 1u);
  u &= 0xFFF00000u;
  *value = FromBits(u);
  return (u >> 20) - (120u << 3);
}

void QuantizeRow(const float* x, int64_t cols, float* xq, uint8_t* codes, int8_t* exps) {
  for (int64_t b0 = 0, blk = 0; b0 < cols; b0 += kQuantBlock, ++blk) {
    const int64_t len = std::min(kQuantBlock, cols - b0);
    float amax = 0.0f;
    for (int64_t k = 0; k < len; ++k) amax = std::max(amax, std::fabs(x[b0 + k]));
    const int e = ActivationScaleExponent(amax);
    exps[blk] = static_cast<int8_t>(e);
    const float inv_scale = Pow2(-e), scale = Pow2(e);
    for (int64_t k = b0; k < b0 + len; ++k) {
      const float v = x[k] * inv_scale;  // == x / 2^e: both are the exact quotient, rounded
      const uint32_t sign = Bits(v) >> 31;
      float magnitude;
      const uint32_t code = E4M3Magnitude(std::fabs(v), &magnitude);
      if (codes != nullptr) codes[k] = static_cast<uint8_t>(code | (sign << 7));
      xq[k] = (sign ? -magnitude : magnitude) * scale;
    }
  }
  for (int64_t k = cols; k < RoundUp(cols, kPadFloats); ++k) xq[k] = 0.0f;
}

void DecodeRow(const KernelWeights& w, int64_t r, int64_t k0, int64_t kc, float* out) {
  switch (w.format) {
    case KernelFormat::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + r * w.cols + k0, kc * sizeof(float));
      break;
    case KernelFormat::kBf16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + r * w.cols + k0;
      for (int64_t k = 0; k < kc; ++k) out[k] = Bf16ToFloat(src[k]);
      break;
    }
    case KernelFormat::kFp8Block: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + r * w.cols + k0;
      const int64_t scale_cols = (w.cols + kQuantBlock - 1) / kQuantBlock;
      const uint8_t* scales = w.scale + (r / kQuantBlock) * scale_cols;
      for (int64_t k = 0; k < kc; ++k) {
        out[k] = E4M3ToFloat(src[k]) * Ue8m0ToFloat(scales[(k0 + k) / kQuantBlock]);
      }
      break;
    }
    case KernelFormat::kFp4Block: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + r * (w.cols / 2);
      const uint8_t* scales = w.scale + r * (w.cols / kFp4Group);
      for (int64_t k = 0; k < kc; ++k) {
        out[k] = PackedE2M1At(src, k0 + k) * Ue8m0ToFloat(scales[(k0 + k) / kFp4Group]);
      }
      break;
    }
  }
}

void Decode(const KernelWeights& w, int64_t r0, int64_t nrows, int64_t k0, int64_t kc, float* panel,
            int64_t ldp) {
  const int64_t padded = RoundUp(kc, kPadFloats);
  for (int64_t i = 0; i < nrows; ++i) {
    float* out = panel + i * ldp;
    DecodeRow(w, r0 + i, k0, kc, out);
    std::fill(out + kc, out + padded, 0.0f);
  }
}

constexpr int kLanes = 8;  // partial sums per (row, x row): k ≡ lane (mod 8)
constexpr int kDotRows = 4;
constexpr int kDotXRows = 4;

template <int MR, int NX>
void DotTile(const float* panel, int64_t ldp, const float* x, int64_t ldx, int64_t kc, float* y,
             int64_t ldy) {
  float acc[MR][NX][kLanes] = {};
  for (int64_t k = 0; k < kc; k += kLanes) {
    for (int m = 0; m < MR; ++m) {
      for (int i = 0; i < NX; ++i) {
        for (int l = 0; l < kLanes; ++l)
          acc[m][i][l] += panel[m * ldp + k + l] * x[i * ldx + k + l];
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int i = 0; i < NX; ++i) {
      float s = 0.0f;
      for (int l = 0; l < kLanes; ++l) s += acc[m][i][l];
      y[i * ldy + m] += s;
    }
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
    default:
      return DotTile<MR, 4>(panel, ldp, x, ldx, kc, y, ldy);
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

constexpr int kStripRows = 16;
constexpr int kStripXRows = 4;

void PackStrip(const float* panel, int64_t ldp, int64_t kc, float* strip) {
  for (int64_t k = 0; k < kc; ++k) {
    for (int r = 0; r < kStripRows; ++r) strip[k * kStripRows + r] = panel[r * ldp + k];
  }
}

void Strip(const float* strip, const float* xpack, int64_t kc, int nx, int rows, float* y,
           int64_t ldy) {
  float acc[kStripXRows][kStripRows] = {};
  for (int64_t k = 0; k < kc; ++k) {
    const float* w = strip + k * kStripRows;
    for (int i = 0; i < kStripXRows; ++i) {
      const float xv = xpack[k * kStripXRows + i];
      for (int r = 0; r < kStripRows; ++r) acc[i][r] += w[r] * xv;
    }
  }
  for (int i = 0; i < nx; ++i) {
    for (int r = 0; r < rows; ++r) y[i * ldy + r] += acc[i][r];
  }
}

}  // namespace

const LinearKernelTable& GenericLinearKernels() {
  static constexpr LinearKernelTable kTable = {
      .name = "generic",
      .quantize_row = QuantizeRow,
      .decode = Decode,
      .dot = Dot,
      .dot_rows = kDotRows,
      .dot_xrows = kDotXRows,
      .pack_strip = PackStrip,
      .strip = Strip,
      .strip_rows = kStripRows,
      .strip_xrows = kStripXRows,
      .strip_min_n = 24,
  };
  return kTable;
}

}  // namespace strata::engine::cpu
