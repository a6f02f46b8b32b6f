#include "engine/cpu/vector_ops.h"

#include <algorithm>
#include <cstring>

namespace strata::engine::cpu {

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define STRATA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STRATA_CLONES
#endif

namespace {

// bf16(f) without a branch, so loops over it vectorise: round to nearest even on the top 16
// bits; NaN keeps its payload's top bits and is made quiet.
inline float RoundOne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const uint32_t nan = (u | 0x00400000u) & 0xFFFF0000u;
  const uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded;
  float out;
  std::memcpy(&out, &r, sizeof(out));
  return out;
}

// The E4M3 value of `b` (engine/numerics.h E4M3ToFloat) from its bits: normal numbers by
// placing the fields, subnormals as m·2^-9, 0x7F/0xFF as NaN; no table, so loops vectorise.
inline float E4M3Value(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80) << 24;
  const uint32_t e = (b >> 3) & 0xFu, m = b & 7u;
  const uint32_t normal = sign | ((e + 120) << 23) | (m << 20);
  const float sub_value = static_cast<float>(m) * 0x1p-9f;
  uint32_t sub;
  std::memcpy(&sub, &sub_value, sizeof(sub));
  sub |= sign;
  const uint32_t nan = sign | 0x7FC00000u;
  const uint32_t bits = e == 0 ? sub : (e == 15 && m == 7 ? nan : normal);
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
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
    for (int i = 0; i < 64; ++i) out[i] = E4M3Value(codes[i]) * s;
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
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

STRATA_CLONES void RoundBf16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = RoundOne(x[i]);
}

STRATA_CLONES void ScaleRoundBf16(const float* x, float r, const float* w, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = RoundOne(x[i] * r * w[i]);
}

STRATA_CLONES void MixRowsBf16(const float* coef, const float* const* rows, int64_t count,
                               int64_t n, float* out) {
  constexpr int64_t kTile = 256;
  float sum[kTile];
  for (int64_t k0 = 0; k0 < n; k0 += kTile) {
    const int64_t len = std::min(kTile, n - k0);
    const float c0 = coef[0];
    const float* row0 = rows[0] + k0;
    for (int64_t k = 0; k < len; ++k) sum[k] = c0 * row0[k];
    for (int64_t i = 1; i < count; ++i) {
      const float c = coef[i];
      const float* row = rows[i] + k0;
      for (int64_t k = 0; k < len; ++k) sum[k] += c * row[k];
    }
    for (int64_t k = 0; k < len; ++k) out[k0 + k] = RoundOne(sum[k]);
  }
}

}  // namespace strata::engine::cpu
