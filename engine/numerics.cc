#include "engine/numerics.h"

#include <algorithm>
#include <array>

namespace strata::engine {
namespace {

std::array<float, 256> MakeE4M3Table() {
  std::array<float, 256> table{};
  for (int b = 0; b < 256; ++b) {
    int sign = b >> 7, exp = (b >> 3) & 0xF, man = b & 0x7;
    float v;
    if (exp == 0xF && man == 0x7) {
      v = NAN;
    } else if (exp == 0) {
      v = std::ldexp(static_cast<float>(man) / 8.0f, -6);
    } else {
      v = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
    }
    table[b] = sign ? -v : v;
  }
  return table;
}

const std::array<float, 256> kE4M3Table = MakeE4M3Table();

}  // namespace

float E4M3ToFloat(uint8_t bits) { return kE4M3Table[bits]; }

uint8_t FloatToE4M3(float f) {
  if (std::isnan(f)) return 0x7F;
  uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  float a = std::fabs(f);
  if (a >= kE4M3Max) return sign | 0x7E;  // saturate (also ±inf)
  // Quantum: subnormals (a < 2^-6) have spacing 2^-9; normals 2^(e-3).
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exp_unbiased = e - 1;
  int quantum_exp = std::max(exp_unbiased, -6) - 3;
  float q = std::ldexp(1.0f, quantum_exp);
  float scaled = a / q;                    // exact: q is a power of two
  float rounded = std::nearbyint(scaled);  // ties to even under the default rounding mode
  float value = rounded * q;
  if (value >= kE4M3Max) return sign | 0x7E;
  // Encode `value` exactly.
  if (value == 0.0f) return sign;
  int ve;
  float vm = std::frexp(value, &ve);  // value = vm * 2^ve
  int exp_field = ve - 1 + 7;
  if (exp_field <= 0) {  // subnormal: value = man/8 * 2^-6
    int man = static_cast<int>(value / std::ldexp(1.0f, -9));
    return sign | static_cast<uint8_t>(man);
  }
  int man = static_cast<int>((vm * 2.0f - 1.0f) * 8.0f);
  return sign | static_cast<uint8_t>((exp_field << 3) | man);
}

uint8_t FloatToE2M1(float f) {
  // Grid magnitudes and the midpoints between them; ties go to the even code (even mantissa bit).
  static constexpr float kGrid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  uint8_t sign = std::signbit(f) ? 0x8 : 0x0;
  if (std::isnan(f)) return 0x7;  // no NaN in E2M1: saturate
  float a = std::fabs(f);
  if (a >= kE2M1Max) return sign | 0x7;
  uint8_t best = 0;
  for (uint8_t c = 1; c < 8; ++c) {
    float mid = 0.5f * (kGrid[c - 1] + kGrid[c]);
    if (a > mid || (a == mid && (c & 1) == 0)) best = c;
  }
  return sign | best;
}

int PowerOfTwoScaleExponent(float amax, float format_max, float amax_floor) {
  float a = std::max(amax, amax_floor);
  return static_cast<int>(std::ceil(std::log2(a / format_max)));
}

}  // namespace strata::engine
