// The model's small ops against plain scalar references (MODEL.md §4–§5).
#include "engine/model_ops.h"

#include <cmath>
#include <vector>

#include "engine/numerics.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

std::vector<float> Values(int64_t n, float scale, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x = scale * (static_cast<float>(seed >> 40) / static_cast<float>(1 << 24) - 0.5f);
  }
  return v;
}

// Dot/Axpy are vectorised with 16 partial sums: equal to the sequential sum up to FP32 rounding
// of n products, |error| <= n · 2^-24 · Σ|a·b| (a loose bound on reassociation).
TEST(ModelOpsTest, DotAndAxpyMatchScalarLoops) {
  for (int64_t n : {1, 15, 16, 17, 128, 1000}) {
    std::vector<float> a = Values(n, 2.0f, 1), b = Values(n, 3.0f, 2);
    double exact = 0, magnitude = 0;
    for (int64_t i = 0; i < n; ++i) {
      exact += static_cast<double>(a[i]) * b[i];
      magnitude += std::fabs(static_cast<double>(a[i]) * b[i]);
    }
    EXPECT_NEAR(Dot(a.data(), b.data(), n), exact, static_cast<double>(n) * std::ldexp(1.0, -24) * magnitude + 1e-30) << n;
    std::vector<float> y = Values(n, 1.0f, 3), want = y;
    Axpy(0.75f, a.data(), y.data(), n);
    // The vectorised clone may fuse the multiply-add (one rounding instead of two).
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(y[i], want[i] + 0.75f * a[i], 2 * std::ldexp(std::fabs(want[i]) + std::fabs(0.75f * a[i]), -24)) << i;
    }
  }
}

TEST(ModelOpsTest, RmsNormRoundsToBf16) {
  std::vector<float> x = {1.0f, -2.0f, 3.0f, 0.5f}, w = {1.0f, 1.0f, 2.0f, 1.0f}, out(4);
  RmsNorm(x.data(), w.data(), 4, 1e-6, out.data());
  const double rms = std::sqrt((1 + 4 + 9 + 0.25) / 4.0 + 1e-6);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out[i], RoundToBf16(out[i]));
    EXPECT_NEAR(out[i], x[i] / rms * w[i], std::fabs(x[i] / rms * w[i]) * 1e-2);
  }
}

TEST(ModelOpsTest, RopeRotatesPairsAndInverts) {
  ModelConfig c = *PresetConfig("tiny");
  Rope plain(c, false), yarn(c, true);
  EXPECT_EQ(plain.dim(), 64);
  // f_0 = 1 for any theta; later frequencies fall; YaRN lowers some of them.
  EXPECT_EQ(plain.freqs()[0], 1.0f);
  EXPECT_LT(plain.freqs()[31], plain.freqs()[1]);
  // YaRN keeps the fastest rotations and divides the slowest by the factor (16).
  ModelConfig no_yarn = c;
  no_yarn.has_rope_scaling = false;
  Rope compressed(no_yarn, true);
  EXPECT_EQ(yarn.freqs()[0], compressed.freqs()[0]);
  EXPECT_FLOAT_EQ(yarn.freqs()[31], compressed.freqs()[31] / 16.0f);
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = RoundToBf16(static_cast<float>(i % 7) - 3.0f);
  std::vector<float> y = x;
  plain.Apply(y.data(), 0, false);
  EXPECT_EQ(y, x) << "position 0 is the identity";
  plain.Apply(y.data(), 1000, false);
  const float angle = 1000.0f * plain.freqs()[0];
  EXPECT_NEAR(y[0], x[0] * std::cos(angle) - x[1] * std::sin(angle), 0.02);
  plain.Apply(y.data(), 1000, true);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(y[i], x[i], 0.05) << i;  // BF16 rounding twice
}

TEST(ModelOpsTest, HadamardIsOrthonormal) {
  std::vector<float> x(128, 0.0f);
  x[5] = 1.0f;
  HadamardBf16(x.data(), 128);
  double norm = 0;
  for (float v : x) {
    EXPECT_NEAR(std::fabs(v), 1.0 / std::sqrt(128.0), 1e-3);
    norm += v * v;
  }
  EXPECT_NEAR(norm, 1.0, 1e-2);
}

TEST(ModelOpsTest, ScaleHeadNormalisesInBf16) {
  std::vector<float> q(128, 2.0f);
  ScaleHead(q.data(), 128, 1e-6);
  for (float v : q) EXPECT_EQ(v, 1.0f);  // mean(q²) = 4 → g = 1/2
}

TEST(ModelOpsTest, HcMixIsNearDoublyStochastic) {
  const int64_t hc = 4;
  std::vector<float> mu(24, 0.0f), base(24, 0.0f), scale = {1.0f, 1.0f, 1.0f};
  for (int i = 0; i < 4; ++i) base[8 + i * 4 + i] = 2.0f;
  HcMix mix;
  ComputeHcMix(mu.data(), base.data(), scale.data(), hc, 20, 1e-6, &mix);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(mix.pre[i], 0.5, 1e-5);
    EXPECT_NEAR(mix.post[i], 1.0, 1e-5);
    float row = 0, col = 0;
    for (int j = 0; j < 4; ++j) {
      row += mix.comb[i * 4 + j];
      col += mix.comb[j * 4 + i];
    }
    EXPECT_NEAR(row, 1.0, 1e-3);
    EXPECT_NEAR(col, 1.0, 1e-3);
    EXPECT_GT(mix.comb[i * 4 + i], mix.comb[i * 4 + (i + 1) % 4]) << "identity-leaning base";
  }
}

}  // namespace
}  // namespace strata::engine
