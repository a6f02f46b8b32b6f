#include "engine/cpu/vector_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/numerics.h"

namespace strata::engine::cpu {

// Clones with GCC only: clang checks the vector helpers' calling convention against each clone's
// target before it inlines them, and refuses the x86-64-v4 clone calling a default-target helper
// (clang builds only the sanitized fuzzers, which need no speed).
#if defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define STRATA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STRATA_CLONES
#endif

namespace {

// 16 floats as one GCC vector: each clone lowers it to its own registers (one zmm, two ymm, four
// xmm) and, like the scalar code, contracts a·b + c to a fused multiply-add where the clone's
// target has FMA — so every lane computes what the scalar loops compute.
// (Such vectors never cross a function boundary here — the helpers are always inlined — so the
// warning that passing them would depend on the clone's ABI does not apply.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V16 __attribute__((vector_size(64)));
__attribute__((always_inline)) inline V16 Load16(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void Store16(float* p, V16 v) {
  std::memcpy(p, &v, sizeof(v));
}
typedef uint32_t U16 __attribute__((vector_size(64)));
typedef uint8_t B16 __attribute__((vector_size(16)));

// bf16(f) without a branch, so loops over it vectorise: round to nearest even on the top 16
// bits; NaN keeps its payload's top bits and is made quiet. F is float or V16, U its bits.
template <typename U, typename F>
__attribute__((always_inline)) inline F RoundLanes(F f) {
  U u;
  std::memcpy(&u, &f, sizeof(u));
  const U rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const U nan = (u | 0x00400000u) & 0xFFFF0000u;
  const U r = (u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded;
  F out;
  std::memcpy(&out, &r, sizeof(out));
  return out;
}
inline float RoundOne(float f) { return RoundLanes<uint32_t>(f); }
__attribute__((always_inline)) inline V16 RoundSixteen(V16 f) { return RoundLanes<U16>(f); }

// The E4M3 values (engine/numerics.h E4M3ToFloat) of 16 codes, times `scale`, from their bits:
// normal numbers by placing the fields, subnormals as m·2^-9, 0x7F/0xFF as NaN.
__attribute__((always_inline)) inline V16 E4M3Sixteen(const uint8_t* codes, float scale) {
  B16 bytes;
  std::memcpy(&bytes, codes, sizeof(bytes));
  const U16 b = __builtin_convertvector(bytes, U16);
  const U16 sign = (b & 0x80u) << 24;
  const U16 e = (b >> 3) & 0xFu, m = b & 7u;
  const U16 normal = sign | ((e + 120u) << 23) | (m << 20);
  const V16 sub_value = __builtin_convertvector(m, V16) * 0x1p-9f;
  U16 sub;
  std::memcpy(&sub, &sub_value, sizeof(sub));
  sub |= sign;
  const U16 nan = sign | 0x7FC00000u;
  const U16 bits = e == 0u ? sub : ((e == 15u) & (m == 7u)) ? nan : normal;
  V16 out;
  std::memcpy(&out, &bits, sizeof(out));
  return out * scale;
}

inline float Ue8m0Value(uint8_t e) {
  if (e == 0xFF) return __builtin_nanf("");
  if (e == 0) return 0x1p-127f;
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

}  // namespace

STRATA_CLONES void DecodeMainEntry(const uint8_t* in, int64_t nope, int64_t rope, float* v) {
  const uint8_t* scales = in + nope;
  for (int64_t b = 0; b < nope / 64; ++b) {
    const float s = Ue8m0Value(scales[b]);
    const uint8_t* codes = in + b * 64;
    float* out = v + b * 64;
    for (int i = 0; i < 64; i += 16) Store16(out + i, E4M3Sixteen(codes + i, s));
  }
  const uint8_t* rope_in = scales + nope / 64;
  for (int64_t i = 0; i < rope; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rope_in[2 * i] | (rope_in[2 * i + 1] << 8)) << 16;
    std::memcpy(v + nope + i, &bits, sizeof(float));
  }
}

STRATA_CLONES float Dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) acc[i & 15] += a[i] * b[i];
  float sum = 0;
  for (int j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}

STRATA_CLONES float SumSquares(const float* x, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * x[i + j];
  }
  for (; i < n; ++i) acc[i & 15] += x[i] * x[i];
  float sum = 0;
  for (int j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}

STRATA_CLONES void Axpy(float alpha, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) Store16(y + i, Load16(y + i) + alpha * Load16(x + i));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

STRATA_CLONES void DotMany(const float* q, int64_t q_stride, int64_t nq, const float* const* rows,
                           int64_t count, int64_t n, float* out, int64_t out_stride) {
  // Blocks of 2 query rows × 4 rows: 8 accumulators of 16 lanes, each lane summing the products
  // of its residue mod 16 in increasing order, exactly as Dot's; then each dot's lanes in order.
  constexpr int kQ = 2, kR = 4;
  for (int64_t h0 = 0; h0 < nq; h0 += kQ) {
    for (int64_t j0 = 0; j0 < count; j0 += kR) {
      if (h0 + kQ > nq || j0 + kR > count || n % 16 != 0) {
        for (int64_t h = h0; h < std::min(nq, h0 + kQ); ++h) {
          for (int64_t j = j0; j < std::min(count, j0 + kR); ++j)
            out[h * out_stride + j] = Dot(q + h * q_stride, rows[j], n);
        }
        continue;
      }
      V16 acc[kQ][kR] = {};
      for (int64_t i = 0; i < n; i += 16) {
        V16 r[kR];
        #pragma GCC unroll 16
        for (int j = 0; j < kR; ++j) r[j] = Load16(rows[j0 + j] + i);
        #pragma GCC unroll 16
        for (int h = 0; h < kQ; ++h) {
          const V16 a = Load16(q + (h0 + h) * q_stride + i);
          #pragma GCC unroll 16
          for (int j = 0; j < kR; ++j) acc[h][j] += a * r[j];
        }
      }
      #pragma GCC unroll 16
      for (int h = 0; h < kQ; ++h) {
        #pragma GCC unroll 16
        for (int j = 0; j < kR; ++j) {
          float sum = 0;
          #pragma GCC unroll 16
          for (int l = 0; l < 16; ++l) sum += acc[h][j][l];
          out[(h0 + h) * out_stride + j0 + j] = sum;
        }
      }
    }
  }
}

STRATA_CLONES void AxpyMany(const float* p, int64_t p_stride, int64_t ny, const float* const* rows,
                            int64_t count, int64_t n, float* y, int64_t y_stride) {
  // Blocks of 4 outputs × 32 values in registers while every row streams past once: per value,
  // the same chain y += p_j · x_j in j order as count Axpy calls.
  constexpr int kY = 4, kV = 2;
  for (int64_t h0 = 0; h0 < ny; h0 += kY) {
    if (h0 + kY > ny || n % (16 * kV) != 0) {
      for (int64_t h = h0; h < std::min(ny, h0 + kY); ++h) {
        for (int64_t j = 0; j < count; ++j) Axpy(p[h * p_stride + j], rows[j], y + h * y_stride, n);
      }
      continue;
    }
    for (int64_t i = 0; i < n; i += 16 * kV) {
      V16 acc[kY][kV];
      #pragma GCC unroll 16
      for (int h = 0; h < kY; ++h) {
        #pragma GCC unroll 16
        for (int v = 0; v < kV; ++v) acc[h][v] = Load16(y + (h0 + h) * y_stride + i + 16 * v);
      }
      for (int64_t j = 0; j < count; ++j) {
        V16 x[kV];
        #pragma GCC unroll 16
        for (int v = 0; v < kV; ++v) x[v] = Load16(rows[j] + i + 16 * v);
        #pragma GCC unroll 16
        for (int h = 0; h < kY; ++h) {
          const float c = p[(h0 + h) * p_stride + j];
          #pragma GCC unroll 16
          for (int v = 0; v < kV; ++v) acc[h][v] += c * x[v];
        }
      }
      #pragma GCC unroll 16
      for (int h = 0; h < kY; ++h) {
        #pragma GCC unroll 16
        for (int v = 0; v < kV; ++v) Store16(y + (h0 + h) * y_stride + i + 16 * v, acc[h][v]);
      }
    }
  }
}

STRATA_CLONES void RoundBf16(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) Store16(x + i, RoundSixteen(Load16(x + i)));
  for (; i < n; ++i) x[i] = RoundOne(x[i]);
}

STRATA_CLONES void ScaleRoundBf16(const float* x, float r, const float* w, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) Store16(out + i, RoundSixteen(Load16(x + i) * r * Load16(w + i)));
  for (; i < n; ++i) out[i] = RoundOne(x[i] * r * w[i]);
}

// Per block: scale 2^e from the block's amax (PowerOfTwoScaleExponent, as the codec), then each
// value to the nearest of ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}·2^e, ties to the even code. On [0, 2),
// [2, 4) and [4, 6) that grid is evenly spaced by 0.5, 1 and 2 with the even codes at the even
// multiples, so it is round-half-even of a/step — adding and subtracting 1.5·2^23 — rather than
// FloatToE2M1's search. Saturates at 6; NaN becomes +6·2^e as FloatToE2M1 makes it.
STRATA_CLONES void SimulateFp4(float* x, int64_t n) {
  const float amax_floor = 6.0f * std::ldexp(1.0f, -126);
  constexpr float kMagic = 0x1.8p23f;
  for (int64_t b = 0; b < n; b += 32) {
    float* v = x + b;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
    const int e = PowerOfTwoScaleExponent(amax, kE2M1Max, amax_floor);
    const float inv = std::ldexp(1.0f, -e), s = std::ldexp(1.0f, e);
    for (int i = 0; i < 32; ++i) {
      const float y = v[i] * inv, a = std::fabs(y);
      const float step = a < 2.0f ? 0.5f : (a < 4.0f ? 1.0f : 2.0f);
      float r = (a * (1.0f / step) + kMagic - kMagic) * step;
      if (!(a < kE2M1Max)) r = kE2M1Max;
      v[i] = (std::isnan(y) ? r : std::copysign(r, y)) * s;
    }
  }
}

STRATA_CLONES void MixRowsBf16(const float* coef, const float* const* rows, int64_t count,
                               int64_t n, float* out) {
  // 64 values at a time in registers; each is c0·x0, then + c_i·x_i in order, as the scalar loop.
  int64_t k = 0;
  for (; k + 64 <= n; k += 64) {
    V16 sum[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) sum[v] = coef[0] * Load16(rows[0] + k + 16 * v);
    for (int64_t i = 1; i < count; ++i) {
      const float c = coef[i];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) sum[v] += c * Load16(rows[i] + k + 16 * v);
    }
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) Store16(out + k + 16 * v, RoundSixteen(sum[v]));
  }
  for (; k < n; ++k) {
    float sum = coef[0] * rows[0][k];
    for (int64_t i = 1; i < count; ++i) sum += coef[i] * rows[i][k];
    out[k] = RoundOne(sum);
  }
}

}  // namespace strata::engine::cpu
