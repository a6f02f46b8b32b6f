#include "engine/numerics.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace strata::engine {
namespace {

TEST(NumericsTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  // 1 + 2^-8 lies exactly between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up.
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::infinity()))));
}

TEST(NumericsTest, E4M3EveryCodeRoundTrips) {
  for (int b = 0; b < 256; ++b) {
    float v = E4M3ToFloat(static_cast<uint8_t>(b));
    if (std::isnan(v)) continue;
    uint8_t back = FloatToE4M3(v);
    if (v == 0.0f) {
      EXPECT_EQ(back & 0x7F, 0) << b;
      continue;
    }
    EXPECT_EQ(back, b) << "code " << b << " value " << v;
  }
  EXPECT_EQ(E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(E4M3ToFloat(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
}

TEST(NumericsTest, E4M3RoundsToNearestEvenAndSaturates) {
  // Between 1.0 (0x38) and 1.125 (0x39): the midpoint goes to the even code 0x38.
  EXPECT_EQ(FloatToE4M3(1.0625f), 0x38);
  // Between 1.125 (0x39) and 1.25 (0x3A): the midpoint goes to 0x3A.
  EXPECT_EQ(FloatToE4M3(1.1875f), 0x3A);
  EXPECT_EQ(FloatToE4M3(1000.0f), 0x7E);
  EXPECT_EQ(FloatToE4M3(-1000.0f), 0xFE);
  EXPECT_EQ(FloatToE4M3(std::numeric_limits<float>::infinity()), 0x7E);
  // Subnormal midpoint between 0 and 2^-9 goes to 0.
  EXPECT_EQ(FloatToE4M3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(FloatToE4M3(std::ldexp(3.0f, -10)), 0x02);  // 1.5·2^-9 -> 2·2^-9 (even)
  // Values just under the max round to it, not past it.
  EXPECT_EQ(FloatToE4M3(440.0f), 0x7E);
  EXPECT_EQ(E4M3ToFloat(FloatToE4M3(300.0f)), 288.0f);  // grid 256,288,320: 300 -> 288
}

TEST(NumericsTest, E2M1GridTiesToEven) {
  const float cases[][2] = {{0.25f, 0.0f}, {0.3f, 0.5f},  {0.75f, 1.0f}, {1.25f, 1.0f}, {1.75f, 2.0f},
                            {2.5f, 2.0f},  {3.5f, 4.0f},  {5.0f, 4.0f},  {5.5f, 6.0f},  {100.0f, 6.0f},
                            {-0.75f, -1.0f}, {-5.0f, -4.0f}};
  for (const auto& c : cases) EXPECT_EQ(E2M1ToFloat(FloatToE2M1(c[0])), c[1]) << c[0];
  for (uint8_t n = 0; n < 16; ++n) {
    if (n == 8) continue;  // -0
    EXPECT_EQ(FloatToE2M1(E2M1ToFloat(n)), n);
  }
  const uint8_t packed[] = {0x21, 0x7F};
  EXPECT_EQ(PackedE2M1At(packed, 0), 0.5f);
  EXPECT_EQ(PackedE2M1At(packed, 1), 1.0f);
  EXPECT_EQ(PackedE2M1At(packed, 2), -6.0f);
  EXPECT_EQ(PackedE2M1At(packed, 3), 6.0f);
}

TEST(NumericsTest, Ue8m0AndPowerOfTwoScales) {
  EXPECT_EQ(Ue8m0ToFloat(127), 1.0f);
  EXPECT_EQ(Ue8m0ToFloat(130), 8.0f);
  EXPECT_EQ(Ue8m0ToFloat(120), std::ldexp(1.0f, -7));
  EXPECT_TRUE(std::isnan(Ue8m0ToFloat(0xFF)));
  EXPECT_EQ(Ue8m0FromExponent(-3), 124);
  // amax 448 -> scale 1; amax 449 -> 2; amax 1 -> 2^-8 (1/448 rounds up to 2^-8).
  EXPECT_EQ(PowerOfTwoScaleExponent(448.0f, kE4M3Max, 1e-4f), 0);
  EXPECT_EQ(PowerOfTwoScaleExponent(449.0f, kE4M3Max, 1e-4f), 1);
  EXPECT_EQ(PowerOfTwoScaleExponent(1.0f, kE4M3Max, 1e-4f), -8);
  EXPECT_EQ(PowerOfTwoScaleExponent(0.0f, kE2M1Max, 6 * std::ldexp(1.0f, -126)), -126);
}

}  // namespace
}  // namespace strata::engine
