// The model's number formats (MODEL.md §2): BF16, FP8 E4M3, FP4 E2M1 and UE8M0 scales, with the
// exact rounding the reference uses (round to nearest even, saturating FP8). Scalar, header-light
// conversions used by the checkpoint writer, the KV cache and the reference paths of the kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace strata::engine {

// ---- BF16 ------------------------------------------------------------------------------------
inline float Bf16ToFloat(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float RoundToBf16(float f) { return Bf16ToFloat(FloatToBf16(f)); }

// ---- FP8 E4M3 (OCP "FN" variant: no infinities, max 448, 0x7F/0xFF are NaN) -------------------
inline constexpr float kE4M3Max = 448.0f;

float E4M3ToFloat(uint8_t bits);
// Round to nearest even, saturating to ±448; NaN maps to 0x7F.
uint8_t FloatToE4M3(float f);

// ---- FP4 E2M1: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}; a nibble, sign in bit 3 ------------------------
inline constexpr float kE2M1Max = 6.0f;

inline float E2M1ToFloat(uint8_t nibble) {
  static constexpr float kValues[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                        -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  return kValues[nibble & 0xF];
}
// Round to nearest even on the E2M1 grid, saturating to ±6.
uint8_t FloatToE2M1(float f);

// Packed FP4 bytes: element 2i in the low nibble, 2i+1 in the high nibble.
inline float PackedE2M1At(const uint8_t* packed, int64_t i) {
  uint8_t byte = packed[i >> 1];
  return E2M1ToFloat((i & 1) ? (byte >> 4) : (byte & 0xF));
}

// ---- UE8M0 scales: value 2^(e - 127); 0xFF is NaN -------------------------------------------
inline float Ue8m0ToFloat(uint8_t e) {
  if (e == 0xFF) return NAN;
  if (e == 0) return std::ldexp(1.0f, -127);
  uint32_t u = static_cast<uint32_t>(e) << 23;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// The UE8M0 byte of a power of two 2^k, k in [-127, 127].
inline uint8_t Ue8m0FromExponent(int k) { return static_cast<uint8_t>(k + 127); }

// The power-of-two block scale the reference uses for a block with absolute maximum `amax`:
// 2^ceil(log2(amax / format_max)), with amax floored at `amax_floor`. Returns the exponent.
int PowerOfTwoScaleExponent(float amax, float format_max, float amax_floor);

}  // namespace strata::engine
