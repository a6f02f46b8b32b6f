// CpuBackend::Linear on every instruction set this CPU supports, against a scalar reference
// written here from MODEL.md §2 with numerics.h, on awkward shapes and on the edges of the number
// formats. The activation quantization must match the reference bit for bit; the products only up
// to FP32 summation order (tolerance below).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/linear_kernels.h"
#include "engine/numerics.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

// ---- the scalar reference ----------------------------------------------------------------------

struct QuantizedRow {
  std::vector<uint8_t> codes;  // E4M3, one per column
  std::vector<int> exps;       // one per 128-block: scale 2^e
};

QuantizedRow ReferenceQuantize(const float* x, int64_t cols) {
  QuantizedRow q;
  q.codes.resize(cols);
  for (int64_t b0 = 0; b0 < cols; b0 += 128) {
    const int64_t end = std::min(cols, b0 + 128);
    float amax = 0.0f;
    for (int64_t k = b0; k < end; ++k) amax = std::max(amax, std::fabs(x[k]));
    const int e = PowerOfTwoScaleExponent(amax, kE4M3Max, 1e-4f);
    q.exps.push_back(e);
    const float s = std::ldexp(1.0f, e);
    for (int64_t k = b0; k < end; ++k) q.codes[k] = FloatToE4M3(x[k] / s);
  }
  return q;
}

// y[n, rows] exactly as MODEL.md §2 writes it, in the reference's order, in FP32.
std::vector<float> ReferenceLinear(const WeightView& w, const std::vector<float>& x, int64_t n) {
  const int64_t rows = w.rows, cols = w.cols;
  std::vector<float> y(n * rows);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x.data() + i * cols;
    if (w.format == WeightFormat::kF32 || w.format == WeightFormat::kBf16) {
      for (int64_t r = 0; r < rows; ++r) {
        float acc = 0.0f;
        for (int64_t k = 0; k < cols; ++k) {
          const float wv = w.format == WeightFormat::kF32
                               ? static_cast<const float*>(w.data)[r * cols + k]
                               : Bf16ToFloat(static_cast<const uint16_t*>(w.data)[r * cols + k]);
          acc += xi[k] * wv;
        }
        y[i * rows + r] = acc;
      }
      continue;
    }
    const QuantizedRow q = ReferenceQuantize(xi, cols);
    const uint8_t* data = static_cast<const uint8_t*>(w.data);
    for (int64_t r = 0; r < rows; ++r) {
      float acc = 0.0f;
      for (int64_t b = 0; b * 128 < cols; ++b) {
        const float sx = std::ldexp(1.0f, q.exps[b]);
        float inner = 0.0f;
        for (int64_t k = b * 128; k < std::min(cols, b * 128 + 128); ++k) {
          const float xq = E4M3ToFloat(q.codes[k]);
          if (w.format == WeightFormat::kFp8Block) {
            inner += xq * E4M3ToFloat(data[r * cols + k]);
          } else {
            const float sw = Ue8m0ToFloat(w.scale[r * (cols / 32) + k / 32]);
            inner += xq * (PackedE2M1At(data + r * (cols / 2), k) * sw);
          }
        }
        if (w.format == WeightFormat::kFp8Block) {
          const float sw = Ue8m0ToFloat(w.scale[(r / 128) * ((cols + 127) / 128) + b]);
          acc += sx * sw * inner;
        } else {
          acc += sx * inner;
        }
      }
      y[i * rows + r] = acc;
    }
  }
  return y;
}

// Σ over the reference's terms of |term|, per output: the scale of the rounding error.
std::vector<float> AbsoluteSums(const WeightView& w, const std::vector<float>& x, int64_t n) {
  std::vector<float> xa(x.size());
  for (size_t j = 0; j < x.size(); ++j) xa[j] = std::fabs(x[j]);
  // |x|·|W| with the same decoding: reuse ReferenceLinear on absolute values. Quantizing |x|
  // gives |xq| (the same scales, rounding is symmetric), so this is Σ |xq·wq|·scales.
  std::vector<uint8_t> abs_data;
  std::vector<float> abs_f32;
  std::vector<uint16_t> abs_bf16;
  WeightView wa = w;
  const int64_t elems = w.rows * w.cols;
  switch (w.format) {
    case WeightFormat::kF32:
      abs_f32.assign(static_cast<const float*>(w.data), static_cast<const float*>(w.data) + elems);
      for (float& v : abs_f32) v = std::fabs(v);
      wa.data = abs_f32.data();
      break;
    case WeightFormat::kBf16:
      abs_bf16.assign(static_cast<const uint16_t*>(w.data),
                      static_cast<const uint16_t*>(w.data) + elems);
      for (uint16_t& v : abs_bf16) v &= 0x7FFF;
      wa.data = abs_bf16.data();
      break;
    case WeightFormat::kFp8Block:
      abs_data.assign(static_cast<const uint8_t*>(w.data),
                      static_cast<const uint8_t*>(w.data) + elems);
      for (uint8_t& v : abs_data) v &= 0x7F;
      wa.data = abs_data.data();
      break;
    case WeightFormat::kFp4Block:
      abs_data.assign(static_cast<const uint8_t*>(w.data),
                      static_cast<const uint8_t*>(w.data) + elems / 2);
      for (uint8_t& v : abs_data) v &= 0x77;
      wa.data = abs_data.data();
      break;
  }
  return ReferenceLinear(wa, xa, n);
}

// ---- test data -------------------------------------------------------------------------------

struct Weights {
  WeightView view;
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> scale;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
};

enum class Fill { kRandom, kZeros, kEveryCode };

// Realistic UE8M0 weight scales (2^-20 .. 2^4): far from the FP32 range limits, where folding
// the scale into the weights stays exact.
uint8_t RandomScale(std::mt19937& rng) { return static_cast<uint8_t>(107 + rng() % 25); }

Weights MakeWeights(WeightFormat format, int64_t rows, int64_t cols, Fill fill, std::mt19937& rng) {
  Weights w;
  w.view.format = format;
  w.view.rows = rows;
  w.view.cols = cols;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t elems = rows * cols;
  switch (format) {
    case WeightFormat::kF32:
      w.f32.resize(elems);
      for (float& v : w.f32) v = fill == Fill::kZeros ? 0.0f : normal(rng) * 0.05f;
      w.view.data = w.f32.data();
      break;
    case WeightFormat::kBf16:
      w.bf16.resize(elems);
      for (int64_t j = 0; j < elems; ++j) {
        w.bf16[j] = fill == Fill::kZeros ? 0 : FloatToBf16(normal(rng) * 0.05f);
      }
      w.view.data = w.bf16.data();
      break;
    case WeightFormat::kFp8Block: {
      w.bytes.resize(elems);
      for (int64_t j = 0; j < elems; ++j) {
        uint8_t b = 0;
        if (fill == Fill::kRandom) {
          b = FloatToE4M3(normal(rng) * 64.0f);
        } else if (fill == Fill::kEveryCode) {
          b = static_cast<uint8_t>(rng() % 256);
          if ((b & 0x7F) == 0x7F) b ^= 0x01;  // NaN codes are tested on their own
        }
        w.bytes[j] = b;
      }
      if (fill == Fill::kEveryCode) {
        for (int c = 0; c < 256 && c < elems; ++c) {
          w.bytes[(c * 7919) % elems] = (c & 0x7F) == 0x7F ? static_cast<uint8_t>(c ^ 1) : c;
        }
      }
      w.scale.resize(((rows + 127) / 128) * ((cols + 127) / 128));
      for (uint8_t& s : w.scale) s = RandomScale(rng);
      w.view.data = w.bytes.data();
      w.view.scale = w.scale.data();
      break;
    }
    case WeightFormat::kFp4Block: {
      w.bytes.resize(elems / 2);
      for (int64_t j = 0; j < elems / 2; ++j) {
        uint8_t lo = 0, hi = 0;
        if (fill == Fill::kRandom) {
          lo = FloatToE2M1(normal(rng) * 2.0f);
          hi = FloatToE2M1(normal(rng) * 2.0f);
        } else if (fill == Fill::kEveryCode) {
          lo = static_cast<uint8_t>(rng() % 16);
          hi = static_cast<uint8_t>(rng() % 16);
        }
        w.bytes[j] = static_cast<uint8_t>(lo | (hi << 4));
      }
      w.scale.resize(rows * (cols / 32));
      for (uint8_t& s : w.scale) s = RandomScale(rng);
      w.view.data = w.bytes.data();
      w.view.scale = w.scale.data();
      break;
    }
  }
  return w;
}

enum class Activations { kNormal, kBf16Values, kZeros, kSaturating, kTiny, kMixed };

std::vector<float> MakeActivations(int64_t n, int64_t cols, Activations kind, std::mt19937& rng) {
  std::vector<float> x(n * cols);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-30, 20);
  for (int64_t j = 0; j < n * cols; ++j) {
    switch (kind) {
      case Activations::kNormal:
        x[j] = normal(rng);
        break;
      case Activations::kBf16Values:  // as the model feeds BF16 weights
        x[j] = RoundToBf16(normal(rng));
        break;
      case Activations::kZeros:
        x[j] = 0.0f;
        break;
      case Activations::kSaturating:  // every value near the block maximum: codes near 448
        x[j] = (rng() % 2 ? 1.0f : -1.0f) * (440.0f + static_cast<float>(rng() % 9)) * 1024.0f;
        break;
      case Activations::kTiny:  // amax below the 1e-4 floor, some FP32 subnormals
        x[j] = normal(rng) * (rng() % 4 == 0 ? 1e-39f : 1e-6f);
        break;
      case Activations::kMixed:  // wide range: E4M3 subnormals, ties, signed zeros
        switch (rng() % 5) {
          case 0:
            x[j] = std::ldexp(normal(rng), exponent(rng));
            break;
          case 1:
            x[j] = (rng() % 2 ? -0.0f : 0.0f);
            break;
          case 2:
            x[j] = std::ldexp(static_cast<float>(rng() % 64) + 0.5f, exponent(rng) % 8);
            break;
          default:
            x[j] = normal(rng) * 3.0f;
            break;
        }
        break;
    }
  }
  return x;
}

// ---- the comparison --------------------------------------------------------------------------

std::vector<CpuIsa> SupportedIsas() {
  std::vector<CpuIsa> isas;
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    if (CpuIsaSupported(isa)) isas.push_back(isa);
  }
  return isas;
}

// batch_invariant off: the comparisons below cover the strip form (many rows) as well.
std::unique_ptr<CpuBackend> MakeBackend(CpuIsa isa, int threads, bool batch_invariant = false) {
  auto backend =
      CpuBackend::Create({.threads = threads, .isa = isa, .batch_invariant = batch_invariant});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// Both the reference and the kernels sum the same exact products (x'·w' equals xq·wq·sx·sw
// exactly: power-of-two scales, no overflow or underflow for these data) in FP32, in different
// orders and groupings. Each FP32 addition of a sum of K terms errs by at most 2^-24 times the
// partial sum, so either result is within ~K·2^-24·Σ|terms| of the exact sum (the classic bound
// for recursive summation, pessimistic for the kernels' pairwise-like lanes). We allow twice
// that, plus K·2^-126 for the BF16-product kernels, which count products below FP32's normal
// range as zero (none occur in these data; the term also covers all-zero outputs).
void ExpectClose(const WeightView& w, const std::vector<float>& want,
                 const std::vector<float>& scale, const std::vector<float>& got,
                 const std::string& what) {
  const double k = static_cast<double>(w.cols) + 4;
  int failures = 0;
  for (size_t j = 0; j < want.size() && failures < 5; ++j) {
    const double tol = 2.0 * k * std::ldexp(1.0, -24) * scale[j] + k * std::ldexp(1.0, -126);
    if (!(std::fabs(static_cast<double>(got[j]) - want[j]) <= tol)) {
      ADD_FAILURE() << what << ": y[" << j / w.rows << "][" << j % w.rows << "] = " << got[j]
                    << ", reference " << want[j] << " (tolerance " << tol << ")";
      ++failures;
    }
  }
}

std::string FormatName(WeightFormat f) { return std::string(WeightFormatName(f)); }

struct Shape {
  int64_t rows, cols, n;
};

void RunCase(WeightFormat format, Shape shape, Fill fill, Activations act, uint32_t seed) {
  std::mt19937 rng(seed);
  const Weights w = MakeWeights(format, shape.rows, shape.cols, fill, rng);
  const std::vector<float> x = MakeActivations(shape.n, shape.cols, act, rng);
  const std::vector<float> want = ReferenceLinear(w.view, x, shape.n);
  const std::vector<float> scale = AbsoluteSums(w.view, x, shape.n);
  for (CpuIsa isa : SupportedIsas()) {
    for (int threads : {1, 3}) {
      // Up to 8 rows both settings run the same kernels.
      for (bool invariant :
           shape.n > 8 ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
        auto backend = MakeBackend(isa, threads, invariant);
        ASSERT_NE(backend, nullptr);
        std::vector<float> y(shape.n * shape.rows, NAN);
        backend->Linear(w.view, x.data(), shape.n, y.data());
        ExpectClose(w.view, want, scale, y,
                    std::string(CpuIsaName(isa)) + " threads=" + std::to_string(threads) +
                        (invariant ? " batch-invariant " : " ") + FormatName(format) + " [" +
                        std::to_string(shape.rows) + "x" + std::to_string(shape.cols) +
                        "] n=" + std::to_string(shape.n));
      }
    }
  }
}

TEST(CpuLinearTest, SupportsTheBuildsInstructionSets) {
  EXPECT_TRUE(CpuIsaSupported(CpuIsa::kGeneric));
  EXPECT_TRUE(CpuIsaSupported(BestCpuIsa()));
  auto backend = CpuBackend::Create({.threads = 1});
  ASSERT_TRUE(backend.ok());
  EXPECT_EQ((*backend)->isa(), BestCpuIsa());
  EXPECT_EQ((*backend)->name(), "cpu");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    EXPECT_TRUE(CpuIsaSupported(CpuIsa::kAvx512)) << "the AVX-512 kernels must be built";
  }
  if (CpuIsaSupported(CpuIsa::kAvx512) && __builtin_cpu_supports("avx512vbmi") &&
      __builtin_cpu_supports("avx512bf16")) {
    EXPECT_TRUE(CpuIsaSupported(CpuIsa::kAvx512Bf16)) << "the AVX512-BF16 kernels must be built";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_TRUE(CpuIsaSupported(CpuIsa::kAvx2)) << "the AVX2 kernels must be built";
  }
#endif
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    if (!CpuIsaSupported(isa)) {
      EXPECT_FALSE(CpuBackend::Create({.isa = isa}).ok()) << CpuIsaName(isa);
    }
  }
}

const Shape kShapes[] = {
    {1, 32, 1},      {5, 96, 3},    {130, 160, 1},  {257, 416, 17}, {64, 1000 / 32 * 32, 64},
    {200, 288, 300}, {33, 128, 24}, {128, 4064, 8}, {300, 2080, 5},
};

TEST(CpuLinearTest, Fp8MatchesReference) {
  uint32_t seed = 1;
  for (const Shape& s : kShapes)
    RunCase(WeightFormat::kFp8Block, s, Fill::kRandom, Activations::kNormal, seed++);
  // cols not a multiple of 32 either (FP8 only needs blocks of 128, the last one partial).
  RunCase(WeightFormat::kFp8Block, {70, 131, 3}, Fill::kRandom, Activations::kNormal, seed++);
  RunCase(WeightFormat::kFp8Block, {129, 1, 30}, Fill::kRandom, Activations::kNormal, seed++);
  RunCase(WeightFormat::kFp8Block, {45, 300, 33}, Fill::kRandom, Activations::kMixed, seed++);
}

TEST(CpuLinearTest, Fp4MatchesReference) {
  uint32_t seed = 100;
  for (const Shape& s : kShapes)
    RunCase(WeightFormat::kFp4Block, s, Fill::kRandom, Activations::kNormal, seed++);
  RunCase(WeightFormat::kFp4Block, {45, 352, 33}, Fill::kRandom, Activations::kMixed, seed++);
}

TEST(CpuLinearTest, Bf16AndF32MatchReference) {
  uint32_t seed = 200;
  for (const Shape& s : kShapes) {
    RunCase(WeightFormat::kBf16, s, Fill::kRandom, Activations::kNormal, seed++);
    RunCase(WeightFormat::kF32, s, Fill::kRandom, Activations::kNormal, seed++);
  }
  // BF16 activations take the BF16-product kernels where the CPU has them.
  for (const Shape& s : kShapes) {
    RunCase(WeightFormat::kBf16, s, Fill::kRandom, Activations::kBf16Values, seed++);
  }
  RunCase(WeightFormat::kBf16, {37, 77, 5}, Fill::kRandom, Activations::kNormal, seed++);
  RunCase(WeightFormat::kBf16, {37, 77, 5}, Fill::kRandom, Activations::kBf16Values, seed++);
  RunCase(WeightFormat::kBf16, {37, 77, 50}, Fill::kRandom, Activations::kBf16Values, seed++);
  RunCase(WeightFormat::kF32, {37, 77, 40}, Fill::kRandom, Activations::kNormal, seed++);
}

TEST(CpuLinearTest, EveryCodeAppears) {
  // All 254 finite E4M3 codes (NaN below) and all 16 E2M1 codes, incl. subnormals and -0.
  uint32_t seed = 300;
  for (Shape s : {Shape{40, 640, 1}, Shape{131, 256, 7}, Shape{64, 384, 40}}) {
    RunCase(WeightFormat::kFp8Block, s, Fill::kEveryCode, Activations::kNormal, seed++);
    RunCase(WeightFormat::kFp4Block, s, Fill::kEveryCode, Activations::kMixed, seed++);
  }
}

TEST(CpuLinearTest, EveryCodeDecodesExactly) {
  // Row r holds one nonzero weight: code r (FP8) or r % 16 (FP4). Then y is a single exact
  // product, so every path must give the reference's value to the bit (NaN for the NaN codes):
  // a wrong entry in any decoding table shows up here even when it is too small to notice in
  // a sum.
  std::mt19937 rng(350);
  for (WeightFormat f : {WeightFormat::kFp8Block, WeightFormat::kFp4Block}) {
    const int64_t rows = f == WeightFormat::kFp8Block ? 256 : 64, cols = 224;
    Weights w = MakeWeights(f, rows, cols, Fill::kZeros, rng);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t k = (r * 37) % cols;
      if (f == WeightFormat::kFp8Block) {
        w.bytes[r * cols + k] = static_cast<uint8_t>(r);
      } else {
        w.bytes[r * cols / 2 + k / 2] = static_cast<uint8_t>((r % 16) << (k % 2 ? 4 : 0));
      }
    }
    for (int64_t n : {int64_t{1}, int64_t{30}}) {
      const std::vector<float> x = MakeActivations(n, cols, Activations::kNormal, rng);
      const std::vector<float> want = ReferenceLinear(w.view, x, n);
      for (CpuIsa isa : SupportedIsas()) {
        std::vector<float> y(n * rows);
        MakeBackend(isa, 2)->Linear(w.view, x.data(), n, y.data());
        for (int64_t j = 0; j < n * rows; ++j) {
          if (std::isnan(want[j])) {
            EXPECT_TRUE(std::isnan(y[j])) << CpuIsaName(isa) << " row " << j % rows;
          } else {
            EXPECT_EQ(y[j], want[j])
                << CpuIsaName(isa) << " " << FormatName(f) << " n=" << n << " row " << j % rows;
          }
        }
      }
    }
  }
}

TEST(CpuLinearTest, ZerosSaturationAndTinyActivations) {
  uint32_t seed = 400;
  for (WeightFormat f : {WeightFormat::kFp8Block, WeightFormat::kFp4Block}) {
    for (Shape s : {Shape{33, 288, 2}, Shape{65, 160, 30}}) {
      RunCase(f, s, Fill::kZeros, Activations::kNormal, seed++);
      RunCase(f, s, Fill::kRandom, Activations::kZeros, seed++);
      RunCase(f, s, Fill::kRandom, Activations::kSaturating, seed++);
      RunCase(f, s, Fill::kRandom, Activations::kTiny, seed++);
      RunCase(f, s, Fill::kEveryCode, Activations::kSaturating, seed++);
    }
  }
}

TEST(CpuLinearTest, EveryTileShape) {
  // n = 1..26 covers every register tile of the dot forms (and the switch to the strip form).
  uint32_t seed = 900;
  for (int64_t n = 1; n <= 26; ++n) {
    RunCase(WeightFormat::kFp8Block, {37, 320, n}, Fill::kRandom, Activations::kNormal, seed++);
    RunCase(WeightFormat::kFp4Block, {37, 352, n}, Fill::kRandom, Activations::kNormal, seed++);
    RunCase(WeightFormat::kBf16, {37, 100, n}, Fill::kRandom, Activations::kBf16Values, seed++);
  }
}

// Scales far from 1 take the FP32 kernels where the BF16 ones would flush subnormal products;
// both must agree with the reference (products stay normal in FP32 for these).
void RunExtremeScales(WeightFormat format, Shape shape, uint32_t seed) {
  std::mt19937 rng(seed);
  Weights w = MakeWeights(format, shape.rows, shape.cols, Fill::kRandom, rng);
  for (size_t j = 0; j < w.scale.size(); ++j) {
    if (j % 5 == 1) w.scale[j] = 50;   // 2^-77
    if (j % 5 == 3) w.scale[j] = 200;  // 2^73
  }
  const std::vector<float> x = MakeActivations(shape.n, shape.cols, Activations::kNormal, rng);
  const std::vector<float> want = ReferenceLinear(w.view, x, shape.n);
  const std::vector<float> scale = AbsoluteSums(w.view, x, shape.n);
  for (CpuIsa isa : SupportedIsas()) {
    auto backend = MakeBackend(isa, 2);
    std::vector<float> y(shape.n * shape.rows);
    backend->Linear(w.view, x.data(), shape.n, y.data());
    ExpectClose(w.view, want, scale, y,
                std::string(CpuIsaName(isa)) + " extreme scales " + FormatName(format) +
                    " n=" + std::to_string(shape.n));
  }
}

TEST(CpuLinearTest, ExtremeScalesFallBackExactly) {
  uint32_t seed = 950;
  for (int64_t n : {1, 6, 30}) {
    RunExtremeScales(WeightFormat::kFp8Block, {300, 640, n}, seed++);
    RunExtremeScales(WeightFormat::kFp4Block, {70, 640, n}, seed++);
  }
}

TEST(CpuLinearTest, Fp8NanCodesPropagate) {
  std::mt19937 rng(500);
  for (uint8_t nan_code : {uint8_t{0x7F}, uint8_t{0xFF}}) {
    Weights w = MakeWeights(WeightFormat::kFp8Block, 20, 384, Fill::kRandom, rng);
    w.bytes[5 * 384 + 200] = nan_code;  // row 5, middle of block 1
    const std::vector<float> x = MakeActivations(3, 384, Activations::kNormal, rng);
    for (CpuIsa isa : SupportedIsas()) {
      for (int64_t n : {int64_t{1}, int64_t{3}}) {
        auto backend = MakeBackend(isa, 1);
        std::vector<float> y(n * 20);
        backend->Linear(w.view, x.data(), n, y.data());
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t r = 0; r < 20; ++r) {
            EXPECT_EQ(std::isnan(y[i * 20 + r]), r == 5) << CpuIsaName(isa) << " r=" << r;
          }
        }
      }
    }
  }
}

TEST(CpuLinearTest, LargeShapesAcrossThreads) {
  // Big enough for every work-splitting path (dot and strip form, several chunks of columns).
  uint32_t seed = 600;
  RunCase(WeightFormat::kFp8Block, {515, 4608, 5}, Fill::kRandom, Activations::kNormal, seed++);
  RunCase(WeightFormat::kFp4Block, {300, 2336, 70}, Fill::kRandom, Activations::kNormal, seed++);
  RunCase(WeightFormat::kFp8Block, {97, 1152, 600}, Fill::kRandom, Activations::kNormal, seed++);
}

TEST(CpuLinearTest, ResultsDoNotDependOnThreads) {
  // Each output is summed by one thread in a fixed order: identical bits for any thread count.
  std::mt19937 rng(700);
  const Weights w = MakeWeights(WeightFormat::kFp8Block, 777, 1500, Fill::kRandom, rng);
  for (int64_t n : {int64_t{4}, int64_t{100}}) {
    const std::vector<float> x = MakeActivations(n, 1500, Activations::kNormal, rng);
    for (CpuIsa isa : SupportedIsas()) {
      std::vector<float> y1(n * 777), y4(n * 777);
      MakeBackend(isa, 1)->Linear(w.view, x.data(), n, y1.data());
      MakeBackend(isa, 4)->Linear(w.view, x.data(), n, y4.data());
      EXPECT_EQ(0, std::memcmp(y1.data(), y4.data(), y1.size() * sizeof(float))) << CpuIsaName(isa);
    }
  }
}

// ---- activation quantization: bit-identical bytes and scales ----------------------------------

const cpu::LinearKernelTable* KernelsFor(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric:
      return &cpu::GenericLinearKernels();
    case CpuIsa::kAvx2:
      return cpu::Avx2LinearKernels();
    case CpuIsa::kAvx512:
    case CpuIsa::kAvx512Bf16:
      return cpu::Avx512LinearKernels();  // same quantization
    default:
      return nullptr;
  }
}

void ExpectQuantizationMatches(const std::vector<float>& x, const std::string& what) {
  const int64_t cols = static_cast<int64_t>(x.size());
  const QuantizedRow want = ReferenceQuantize(x.data(), cols);
  for (CpuIsa isa : SupportedIsas()) {
    const cpu::LinearKernelTable* k = KernelsFor(isa);
    ASSERT_NE(k, nullptr);
    std::vector<float> xq(cpu::RoundUp(cols, cpu::kPadFloats), NAN);
    std::vector<uint8_t> codes(cols, 0xAA);
    std::vector<int8_t> exps((cols + 127) / 128, 99);
    k->quantize_row(x.data(), cols, xq.data(), codes.data(), exps.data());
    for (size_t b = 0; b < exps.size(); ++b) {
      ASSERT_EQ(exps[b], want.exps[b]) << CpuIsaName(isa) << " " << what << " block " << b;
    }
    for (int64_t j = 0; j < cols; ++j) {
      ASSERT_EQ(codes[j], want.codes[j])
          << CpuIsaName(isa) << " " << what << " x[" << j << "] = " << x[j];
      const float value = E4M3ToFloat(want.codes[j]) * std::ldexp(1.0f, want.exps[j / 128]);
      ASSERT_EQ(std::memcmp(&xq[j], &value, 4), 0)
          << CpuIsaName(isa) << " " << what << " xq[" << j << "] = " << xq[j] << ", want " << value;
    }
    for (int64_t j = cols; j < static_cast<int64_t>(xq.size()); ++j) {
      ASSERT_EQ(xq[j], 0.0f) << CpuIsaName(isa) << " padding";
    }
  }
}

TEST(CpuLinearTest, QuantizationIsBitIdentical) {
  std::mt19937 rng(800);
  for (Activations kind : {Activations::kNormal, Activations::kBf16Values, Activations::kZeros,
                           Activations::kSaturating, Activations::kTiny, Activations::kMixed}) {
    for (int64_t cols : {1, 15, 128, 200, 1000, 4096}) {
      ExpectQuantizationMatches(
          MakeActivations(1, cols, kind, rng),
          "kind " + std::to_string(static_cast<int>(kind)) + " cols " + std::to_string(cols));
    }
  }
}

TEST(CpuLinearTest, QuantizationHitsEveryCodeAndTie) {
  // One block with amax 448 (scale 1): then x/s = x, and every E4M3 value, every midpoint
  // between neighbours (ties to even) and points just off the midpoints appear.
  std::vector<float> x = {448.0f};
  for (int c = 0; c < 0x7E; ++c) {  // 0x7F is NaN
    const float v = E4M3ToFloat(static_cast<uint8_t>(c));
    const float next = E4M3ToFloat(static_cast<uint8_t>(c + 1));
    const float mid = 0.5f * (v + next);
    for (float f : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f)}) {
      x.push_back(f);
      x.push_back(-f);
    }
  }
  x.push_back(447.99f);
  x.push_back(-0.0f);
  // Blocks of 128 each need their own amax: make every block start with ±448.
  std::vector<float> blocks;
  for (size_t j = 0; j < x.size(); ++j) {
    if (blocks.size() % 128 == 0) blocks.push_back(448.0f);
    blocks.push_back(x[j]);
  }
  ExpectQuantizationMatches(blocks, "grid");
  // Scales near power-of-two boundaries of amax / 448 (the ceil(log2) edge).
  std::vector<float> edges;
  for (int e = -20; e < 20; ++e) {
    const float a = std::ldexp(448.0f, e);
    for (float amax : {a, std::nextafter(a, 0.0f), std::nextafter(a, 1e30f)}) {
      edges.push_back(amax);
      for (int j = 1; j < 128; ++j) edges.push_back(amax * static_cast<float>(j) / 128.0f);
    }
  }
  ExpectQuantizationMatches(edges, "scale edges");
}

}  // namespace
}  // namespace strata::engine

namespace strata::engine {
namespace {

// With batch_invariant (the default, what the model uses) a row's output does not depend on how
// many rows share the call: prefill in chunks of any size and decode give bit-identical results.
TEST(CpuLinearBatchInvarianceTest, RowsMatchSingleRowCallsBitForBit) {
  const int64_t rows = 300, cols = 512, n = 200;
  std::vector<uint8_t> fp8(static_cast<size_t>(rows * cols)),
      scales(static_cast<size_t>(3 * 4), 124);
  std::vector<uint16_t> bf16(static_cast<size_t>(rows * cols));
  uint64_t s = 5;
  auto next = [&] { return (s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  for (auto& b : fp8) b = static_cast<uint8_t>(next() % 0x7E);
  for (auto& b : bf16)
    b = FloatToBf16(static_cast<float>(static_cast<int>(next() % 2001) - 1000) / 1000.0f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (auto& v : x)
    v = RoundToBf16(static_cast<float>(static_cast<int>(next() % 2001) - 1000) / 250.0f);
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    if (!CpuIsaSupported(isa)) continue;
    auto backend = CpuBackend::Create({.threads = 2, .isa = isa});
    ASSERT_TRUE(backend.ok());
    for (WeightView w : {WeightView{WeightFormat::kFp8Block, fp8.data(), scales.data(), rows, cols},
                         WeightView{WeightFormat::kBf16, bf16.data(), nullptr, rows, cols}}) {
      std::vector<float> all(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
      (*backend)->Linear(w, x.data(), n, all.data());
      for (int64_t i : {int64_t{0}, int64_t{77}, n - 1}) {
        (*backend)->Linear(w, x.data() + i * cols, 1, one.data());
        EXPECT_EQ(std::memcmp(one.data(), all.data() + i * rows, static_cast<size_t>(rows) * 4), 0)
            << CpuIsaName(isa) << " row " << i;
      }
    }
  }
}

// The same with more columns than one column range of the BF16 dot form and a partial last range,
// for every format, and with FP4 scales that send some rows to the FP32 kernels.
TEST(CpuLinearBatchInvarianceTest, ColumnRangesKeepRowsBitForBit) {
  std::mt19937 rng(1000);
  const int64_t rows = 70, cols = 2336, n = 41;
  std::vector<Weights> weights;
  for (WeightFormat f : {WeightFormat::kFp8Block, WeightFormat::kFp4Block, WeightFormat::kBf16,
                         WeightFormat::kF32}) {
    weights.push_back(MakeWeights(f, rows, cols, Fill::kRandom, rng));
  }
  for (size_t j = 0; j < weights[1].scale.size(); j += 97) weights[1].scale[j] = 50;
  const std::vector<float> x = MakeActivations(n, cols, Activations::kBf16Values, rng);
  for (CpuIsa isa : SupportedIsas()) {
    auto backend = MakeBackend(isa, 2, /*batch_invariant=*/true);
    for (const Weights& w : weights) {
      std::vector<float> all(n * rows), one(rows);
      backend->Linear(w.view, x.data(), n, all.data());
      for (int64_t i : {int64_t{0}, int64_t{9}, int64_t{33}, n - 1}) {
        backend->Linear(w.view, x.data() + i * cols, 1, one.data());
        EXPECT_EQ(std::memcmp(one.data(), all.data() + i * rows, rows * sizeof(float)), 0)
            << CpuIsaName(isa) << " " << FormatName(w.view.format) << " row " << i;
      }
    }
  }
}

}  // namespace
}  // namespace strata::engine
