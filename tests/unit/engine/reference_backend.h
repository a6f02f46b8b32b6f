// A scalar, obviously-correct engine::Backend for tests: every linear written as the plain loops
// of MODEL.md §2, row by row, so its results do not depend on how rows are batched. Optimized
// backends are compared with it, and the model's invariance tests run on it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/numerics.h"

namespace strata::engine::testing {

// E4M3 activation quantization of one row, per block of 128: the codes' values times the
// block's power-of-two scale, returned as floats (exactly what an FP8 linear multiplies).
inline void QuantizeActivationRow(const float* x, int64_t cols, std::vector<float>& q, std::vector<float>& scale) {
  q.assign(static_cast<size_t>(cols), 0.0f);
  scale.assign(static_cast<size_t>((cols + 127) / 128), 0.0f);
  for (int64_t b = 0; b * 128 < cols; ++b) {
    const int64_t end = std::min(cols, b * 128 + 128);
    float amax = 0;
    for (int64_t i = b * 128; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    const int e = PowerOfTwoScaleExponent(amax, kE4M3Max, 1e-4f);
    scale[static_cast<size_t>(b)] = std::ldexp(1.0f, e);
    for (int64_t i = b * 128; i < end; ++i) q[static_cast<size_t>(i)] = E4M3ToFloat(FloatToE4M3(x[i] * std::ldexp(1.0f, -e)));
  }
}

class ReferenceBackend : public Backend {
 public:
  absl::string_view name() const override { return "reference"; }

  void Linear(const WeightView& w, const float* x, int64_t n, float* y) override {
    std::vector<float> q, sx;
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x + r * w.cols;
      float* yr = y + r * w.rows;
      if (w.format == WeightFormat::kBf16 || w.format == WeightFormat::kF32) {
        for (int64_t o = 0; o < w.rows; ++o) {
          float sum = 0;
          for (int64_t i = 0; i < w.cols; ++i) sum += xr[i] * Weight(w, o, i);
          yr[o] = sum;
        }
        continue;
      }
      QuantizeActivationRow(xr, w.cols, q, sx);
      for (int64_t o = 0; o < w.rows; ++o) {
        float total = 0;
        for (int64_t b = 0; b * 128 < w.cols; ++b) {
          float sum = 0;
          for (int64_t i = b * 128; i < std::min(w.cols, b * 128 + 128); ++i) sum += q[static_cast<size_t>(i)] * Weight(w, o, i);
          total += sum * sx[static_cast<size_t>(b)];
        }
        yr[o] = total;
      }
    }
  }

  // The dequantized weight W[o][i] (for FP8 including its block scale; for FP4 its 32-scale).
  static float Weight(const WeightView& w, int64_t o, int64_t i) {
    switch (w.format) {
      case WeightFormat::kBf16: return Bf16ToFloat(static_cast<const uint16_t*>(w.data)[o * w.cols + i]);
      case WeightFormat::kF32: return static_cast<const float*>(w.data)[o * w.cols + i];
      case WeightFormat::kFp8Block: {
        const int64_t scols = (w.cols + 127) / 128;
        return E4M3ToFloat(static_cast<const uint8_t*>(w.data)[o * w.cols + i]) *
               Ue8m0ToFloat(w.scale[(o / 128) * scols + i / 128]);
      }
      case WeightFormat::kFp4Block:
        return PackedE2M1At(static_cast<const uint8_t*>(w.data) + o * (w.cols / 2), i) *
               Ue8m0ToFloat(w.scale[o * (w.cols / 32) + i / 32]);
    }
    return 0;
  }
};

}  // namespace strata::engine::testing
