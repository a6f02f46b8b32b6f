// engine::Backend's memory, dense and mHC ops on every CpuBackend instruction set against the
// scalar ReferenceBackend (reference_backend.h), on seeded random inputs of the tiny and small
// presets' shapes and odd row counts, plus the ops' own properties (MODEL.md §4–§5) on every
// backend. The MoE ops are in backend_moe_ops_test.cc, the attention-side ops in
// backend_attention_ops_test.cc.
//
// Where the contract fixes every rounding and an op sums no long vector, the backends must agree
// bit for bit. Elsewhere the CPU backend may sum in another order (vector partial sums, fused
// multiply-adds), so FP32 results differ in their last bits, and a BF16 rounding of such a result
// can land on the neighbouring value; each tolerance says how far that can carry.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/numerics.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/backend_ops_test_util.h"
#include "tests/unit/engine/reference_backend.h"

namespace strata::engine::backend_test {
namespace {

using testing::ReferenceBackend;

std::string At(const char* op, int64_t rows, int64_t dim) {
  return absl::StrCat(op, " rows=", rows, " dim=", dim);
}

// ---- memory ------------------------------------------------------------------------------------

TEST(BackendMemoryTest, AllocatesAlignedMemoryAndCopiesBytes) {
  Random rng(1);
  const std::vector<uint8_t> host = rng.Bytes(1000);
  for (NamedBackend& nb : AllBackends()) {
    SCOPED_TRACE(nb.label);
    Backend& b = *nb.backend;
    Buffer first(b, 1000), second(b, 1000);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first.as<void>()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(second.as<void>()) % 64, 0u);
    b.ToDevice(first.as<void>(), host.data(), 1000);
    b.Copy(second.as<void>(), first.as<void>(), 1000);
    EXPECT_EQ(second.Read<uint8_t>(), host);
    absl::StatusOr<const void*> resident = b.MakeResident(host.data(), 1000);
    ASSERT_TRUE(resident.ok()) << resident.status();
    std::vector<uint8_t> back(1000);
    b.ToHost(back.data(), *resident, 1000);
    EXPECT_EQ(back, host);
    // Out of memory is a status, not a crash: 2^60 bytes exceeds any address space.
    absl::StatusOr<void*> huge = b.Allocate(int64_t{1} << 60);
    EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
    if (huge.ok()) b.Free(*huge);
  }
}

// ---- dense ops ---------------------------------------------------------------------------------

// Linear is compared with its own scalar reference on many more shapes in cpu_linear_test.cc;
// here once more against ReferenceBackend, through backend memory. The activation quantization
// is bit-identical, so outputs differ only by FP32 summation order: DotBound.
TEST(BackendDenseTest, LinearMatchesReference) {
  Random rng(2);
  struct Case {
    WeightFormat format;
    int64_t rows, cols;
  };
  for (const Case& c :
       {Case{WeightFormat::kFp8Block, 192, 320}, Case{WeightFormat::kFp4Block, 160, 256},
        Case{WeightFormat::kBf16, 130, 256}, Case{WeightFormat::kF32, 24, 1024}}) {
    const TestWeight w = MakeWeight(c.format, c.rows, c.cols, rng);
    for (int64_t n : kRows) {
      const std::vector<float> x = rng.Bf16Normals(n * c.cols);
      std::vector<float> scale(static_cast<size_t>(n * c.rows));
      ReferenceBackend().Linear(w.abs_view, Abs(x).data(), n, scale.data());
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer xb = Buffer::Of(b, x), y(b, n * c.rows * 4);
            b.Linear(ResidentView(b, w), xb.as<float>(), n, y.as<float>());
            return y.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectClose(want, got, {[&](size_t i) { return DotBound(c.cols, scale[i]); }, 1.0},
                        absl::StrCat("Linear ", WeightFormatName(c.format), " n=", n));
          });
    }
  }
}

// The grouped output projection (wo_a): per group a dot of cols_g terms, so DotBound.
TEST(BackendDenseTest, GroupedLinearMatchesReference) {
  Random rng(3);
  struct Case {
    WeightFormat format;
    int64_t groups, rows_g, cols_g;
  };
  // tiny (G 2, o_lora 128, H·c/G 256), small (4, 256, 512), and odd sizes.
  for (const Case& c :
       {Case{WeightFormat::kBf16, 2, 128, 256}, Case{WeightFormat::kBf16, 4, 256, 512},
        Case{WeightFormat::kF32, 3, 17, 40}}) {
    const TestWeight w = MakeWeight(c.format, c.groups * c.rows_g, c.cols_g, rng);
    for (int64_t n : kRows) {
      const std::vector<float> x = rng.Bf16Normals(n * c.groups * c.cols_g);
      std::vector<float> scale(static_cast<size_t>(n * c.groups * c.rows_g));
      ReferenceBackend().GroupedLinear(w.abs_view, c.groups, Abs(x).data(), n, scale.data());
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer xb = Buffer::Of(b, x), y(b, n * c.groups * c.rows_g * 4);
            b.GroupedLinear(ResidentView(b, w), c.groups, xb.as<float>(), n, y.as<float>());
            return y.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectClose(want, got, {[&](size_t i) { return DotBound(c.cols_g, scale[i]); }, 1.0},
                        absl::StrCat("GroupedLinear groups=", c.groups, " n=", n));
          });
    }
  }
}

TEST(BackendDenseTest, EmbedCopiesRowsBitForBit) {
  Random rng(4);
  const int64_t vocab = 1000, d = 256;
  std::vector<uint16_t> table;
  for (float v : rng.Normals(vocab * d)) table.push_back(FloatToBf16(v));
  for (int64_t n : kRows) {
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < n; ++t) ids.push_back(static_cast<int32_t>(rng.Int(0, vocab - 1)));
    ids[0] = static_cast<int32_t>(vocab - 1);
    for (int64_t copies : {1, 4}) {
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer idb = Buffer::Of(b, ids), out(b, n * copies * d * 4);
            b.Embed(Resident(b, table), d, idb.as<int32_t>(), n, copies, out.as<float>());
            return out.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectBitIdentical(want, got, absl::StrCat("Embed n=", n, " copies=", copies));
          });
    }
  }
}

// FP32 values around every kind of BF16 rounding: ties to even both ways, just off ties,
// subnormals, −0, large values.
std::vector<float> RoundingInputs(Random& rng, int64_t n) {
  std::vector<float> x = rng.Normals(n, 3.0f);
  for (int64_t i = 0; i < n; i += 5) {
    const float base = RoundToBf16(x[i]);
    const float half = static_cast<float>(Bf16Ulp(base) / 2);
    switch ((i / 5) % 6) {
      case 0:
        x[i] = base + half;
        break;
      case 1:
        x[i] = base - half;
        break;
      case 2:
        x[i] = std::nextafter(base + half, 0.0f);
        break;
      case 3:
        x[i] = std::ldexp(x[i], -130);
        break;
      case 4:
        x[i] = -0.0f;
        break;
      case 5:
        x[i] = std::ldexp(x[i], 100);
        break;
    }
  }
  return x;
}

// One rounding of an exactly specified FP32 operation each: bit for bit.
TEST(BackendDenseTest, RoundScaleAndAddAreBitExact) {
  Random rng(5);
  for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{17}, int64_t{130 * 256 + 5}}) {
    const std::vector<float> a = RoundingInputs(rng, n), c = RoundingInputs(rng, n);
    ForEachOptimizedBackend(
        [&](Backend& b) {
          Buffer x = Buffer::Of(b, a);
          b.RoundBf16(x.as<float>(), n);
          return x.Read<float>();
        },
        [&](const std::vector<float>& want, const std::vector<float>& got) {
          ExpectBitIdentical(want, got, absl::StrCat("RoundBf16 n=", n));
        });
    // The indexer's weight factor ic^-1/2 · IH^-1/2, and an arbitrary one.
    for (float factor : {(1.0f / std::sqrt(128.0f)) * (1.0f / std::sqrt(8.0f)), 0.37f}) {
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer x = Buffer::Of(b, a);
            b.ScaleBf16(x.as<float>(), n, factor);
            return x.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectBitIdentical(want, got, absl::StrCat("ScaleBf16 n=", n, " factor=", factor));
          });
    }
    // out separate, out aliasing a, out aliasing b.
    for (int alias = 0; alias < 3; ++alias) {
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer x = Buffer::Of(b, a), y = Buffer::Of(b, c), out(b, n * 4);
            float* dst = alias == 0 ? out.as<float>() : alias == 1 ? x.as<float>() : y.as<float>();
            b.AddBf16(x.as<float>(), y.as<float>(), n, dst);
            return (alias == 0 ? out : alias == 1 ? x : y).Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectBitIdentical(want, got, absl::StrCat("AddBf16 n=", n, " alias=", alias));
          });
    }
  }
}

TEST(BackendDenseTest, GatherRowsCopiesBitForBit) {
  Random rng(6);
  const int64_t src_rows = 50, width = 259;
  const std::vector<float> src = rng.Normals(src_rows * width);
  for (int64_t n : kRows) {
    std::vector<int32_t> idx;
    for (int64_t i = 0; i < n; ++i) idx.push_back(static_cast<int32_t>(rng.Int(0, src_rows - 1)));
    idx[0] = src_rows - 1;
    ForEachOptimizedBackend(
        [&](Backend& b) {
          Buffer s = Buffer::Of(b, src), ib = Buffer::Of(b, idx), dst(b, n * width * 4);
          b.GatherRows(s.as<float>(), width, ib.as<int32_t>(), n, dst.as<float>());
          return dst.Read<float>();
        },
        [&](const std::vector<float>& want, const std::vector<float>& got) {
          ExpectBitIdentical(want, got, absl::StrCat("GatherRows n=", n));
        });
  }
}

// Only Σu² depends on the summation order: dim positive terms, so reordering moves it by at most
// dim·u relative (≤ 2^-14 for dim ≤ 1024) and rsqrt by half that plus its own rounding. u·r·w
// then moves by far less than half a BF16 ulp (2^-9 relative): a result is at most one BF16 ulp
// off, and only when it lies that close to a rounding midpoint — ~2^-14 of the values for the
// few-ulp differences real sums show, so ≤ 1% may differ. Inputs are FP32, not BF16, so a backend
// that skips u = bf16(x) changes Σu² by ~2^-9 and moves most values.
TEST(BackendDenseTest, RmsNormMatchesReference) {
  Random rng(7);
  for (int64_t dim : {128, 256, 512, 1024}) {
    std::vector<float> w = rng.Bf16Normals(dim, 0.2f);
    for (float& v : w) v = RoundToBf16(v + 1.0f);
    for (int64_t rows : kRows) {
      const std::vector<float> x = rng.Normals(rows * dim, 3.0f);
      for (bool in_place : {false, true}) {
        ForEachOptimizedBackend(
            [&](Backend& b) {
              Buffer xb = Buffer::Of(b, x), out(b, rows * dim * 4);
              float* dst = in_place ? xb.as<float>() : out.as<float>();
              b.RmsNorm(xb.as<float>(), Resident(b, w), rows, dim, 1e-6f, dst);
              return (in_place ? xb : out).Read<float>();
            },
            [&](const std::vector<float>& want, const std::vector<float>& got) {
              ExpectClose(want, got, {Bf16UlpsBound(want, got, 1), 0.01},
                          At(in_place ? "RmsNorm in place" : "RmsNorm", rows, dim));
            });
      }
    }
  }
}

// ---- mHC ---------------------------------------------------------------------------------------

struct HcCase {
  std::vector<float> fn, base, scale;
  HcParams params;
};

// Weights like `strata mkmodel`'s (μ ≈ N(0,1); pre/post logits 0, an identity-leaning mix) with
// noise on the base so no two streams mix alike.
HcCase MakeHc(int64_t hc, int64_t d, bool head, Random& rng) {
  HcCase c;
  const int64_t mix = head ? hc : (2 + hc) * hc;
  c.fn = rng.Normals(mix * hc * d, 1.0f / std::sqrt(static_cast<float>(hc * d)));
  c.base = rng.Normals(mix, 0.1f);
  if (!head) {
    for (int64_t i = 0; i < hc; ++i) c.base[2 * hc + i * hc + i] += 2.0f;
  }
  c.scale = head ? std::vector<float>{0.5f} : std::vector<float>{0.5f, 0.7f, 0.6f};
  c.params = HcParams{nullptr, nullptr, nullptr, hc, d, mix, 20, 1e-6f, 1e-6f};
  return c;
}

HcParams ResidentHc(Backend& b, const HcCase& c) {
  HcParams p = c.params;
  p.fn = Resident(b, c.fn);
  p.base = Resident(b, c.base);
  p.scale = Resident(b, c.scale);
  return p;
}

// Σ_i |X_i[k]| per output element of a weighted stream sum.
std::vector<float> StreamMagnitudes(const std::vector<float>& streams, int64_t rows, int64_t hc,
                                    int64_t d) {
  std::vector<float> m(static_cast<size_t>(rows * d), 0.0f);
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t i = 0; i < hc; ++i) {
      for (int64_t k = 0; k < d; ++k) m[t * d + k] += std::fabs(streams[(t * hc + i) * d + k]);
    }
  }
  return m;
}

// μ is a dot of hc·d terms: reordered, it moves by a few FP32 ulps in practice (n·u·Σ|terms| at
// worst); the sigmoids (slope ≤ s/4 with s ≤ 1) and the Sinkhorn normalisations (ratios of O(1)
// sums) carry that over at about the same size. The mix entries are O(1) (pre ≤ 1 + eps,
// post < 2, comb ≤ 1), so an absolute 2^-14 on them is > 100 times the expected difference
// while a wrong step (one Sinkhorn iteration more or less, a missing eps) is larger than that.
// x_out = bf16(Σ pre_i X_i): pre moved by ≤ 2^-14, so the sum by ≤ 2^-14·Σ|X_i| before the
// rounding — at most one BF16 ulp apart plus that, and rarely (≤ 1% of values) different at all.
TEST(BackendMhcTest, HcPreMatchesReference) {
  Random rng(8);
  for (int64_t d : {256, 1024}) {
    const HcCase hc = MakeHc(4, d, /*head=*/false, rng);
    for (int64_t rows : kRows) {
      const std::vector<float> streams = rng.Bf16Normals(rows * 4 * d);
      const std::vector<float> magnitude = StreamMagnitudes(streams, rows, 4, d);
      struct Out {
        std::vector<float> mix, x;
      };
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer s = Buffer::Of(b, streams), mix(b, rows * hc.params.mix * 4), x(b, rows * d * 4);
            b.HcPre(ResidentHc(b, hc), s.as<float>(), rows, mix.as<float>(), x.as<float>());
            return Out{mix.Read<float>(), x.Read<float>()};
          },
          [&](const Out& want, const Out& got) {
            ExpectClose(want.mix, got.mix, {[](size_t) { return 0x1p-14; }, 1.0},
                        At("HcPre mix", rows, d));
            ExpectClose(
                want.x, got.x,
                {Bf16UlpsBound(want.x, got.x, 1, [&](size_t i) { return 0x1p-14 * magnitude[i]; }),
                 0.01},
                At("HcPre x", rows, d));
          });
    }
  }
}

// streams = bf16(post·y + Σ comb·X): five products summed; any order (or fused multiply-adds)
// moves the FP32 sum by ≤ 2·5·u·Σ|terms|, so each value is within one BF16 ulp plus that, and
// ≤ 1% of values differ.
TEST(BackendMhcTest, HcPostMatchesReference) {
  Random rng(9);
  for (int64_t d : {256, 1024}) {
    const HcCase hc = MakeHc(4, d, false, rng);
    for (int64_t rows : kRows) {
      const std::vector<float> old = rng.Bf16Normals(rows * 4 * d), y = rng.Bf16Normals(rows * d);
      std::vector<float> mix(static_cast<size_t>(rows * hc.params.mix)),
          x(static_cast<size_t>(rows * d));
      {
        ReferenceBackend ref;
        HcParams p = hc.params;
        p.fn = hc.fn.data();
        p.base = hc.base.data();
        p.scale = hc.scale.data();
        ref.HcPre(p, old.data(), rows, mix.data(), x.data());
      }
      std::vector<float> terms(old.size());
      for (int64_t t = 0; t < rows; ++t) {
        for (int64_t j = 0; j < 4; ++j) {
          for (int64_t k = 0; k < d; ++k) {
            float sum = std::fabs(mix[t * hc.params.mix + 4 + j] * y[t * d + k]);
            for (int64_t i = 0; i < 4; ++i)
              sum += std::fabs(mix[t * hc.params.mix + 8 + i * 4 + j] * old[(t * 4 + i) * d + k]);
            terms[(t * 4 + j) * d + k] = sum;
          }
        }
      }
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer m = Buffer::Of(b, mix), yb = Buffer::Of(b, y), s = Buffer::Of(b, old);
            b.HcPost(ResidentHc(b, hc), m.as<float>(), yb.as<float>(), rows, s.as<float>());
            return s.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectClose(
                want, got,
                {Bf16UlpsBound(want, got, 1, [&](size_t i) { return 10 * kFp32Eps * terms[i]; }),
                 0.01},
                At("HcPost", rows, d));
          });
    }
  }
}

// As HcPre's x_out (the head's pre has no Sinkhorn step, so it moves even less).
TEST(BackendMhcTest, HcHeadMatchesReference) {
  Random rng(10);
  for (int64_t d : {256, 1024}) {
    const HcCase hc = MakeHc(4, d, /*head=*/true, rng);
    for (int64_t rows : kRows) {
      const std::vector<float> streams = rng.Bf16Normals(rows * 4 * d);
      const std::vector<float> magnitude = StreamMagnitudes(streams, rows, 4, d);
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer s = Buffer::Of(b, streams), out(b, rows * d * 4);
            b.HcHead(ResidentHc(b, hc), s.as<float>(), rows, out.as<float>());
            return out.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectClose(
                want, got,
                {Bf16UlpsBound(want, got, 1, [&](size_t i) { return 0x1p-14 * magnitude[i]; }),
                 0.01},
                At("HcHead", rows, d));
          });
    }
  }
}

// ---- properties of the ops, on every backend --------------------------------------------------

TEST(BackendPropertyTest, RmsNormNormalisesAndRoundsToBf16) {
  const std::vector<float> x = {1.0f, -2.0f, 3.0f, 0.5f}, w = {1.0f, 1.0f, 2.0f, 1.0f};
  const double rms = std::sqrt((1 + 4 + 9 + 0.25) / 4.0 + 1e-6);
  for (NamedBackend& nb : AllBackends()) {
    Buffer xb = Buffer::Of(*nb.backend, x), out(*nb.backend, 16);
    nb.backend->RmsNorm(xb.as<float>(), Resident(*nb.backend, w), 1, 4, 1e-6f, out.as<float>());
    const std::vector<float> y = out.Read<float>();
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(y[i], RoundToBf16(y[i])) << nb.label;
      EXPECT_NEAR(y[i], x[i] / rms * w[i], std::fabs(x[i] / rms * w[i]) * 0x1p-8)
          << nb.label << " " << i;
    }
  }
}

TEST(BackendPropertyTest, HcMixIsNearDoublyStochastic) {
  // μ = 0 (all-zero W_fn), identity-leaning comb base: pre = σ(0) + eps, post = 2σ(0) = 1.
  const int64_t hc = 4, d = 64;
  HcCase c;
  c.fn.assign(static_cast<size_t>(24 * hc * d), 0.0f);
  c.base.assign(24, 0.0f);
  for (int i = 0; i < 4; ++i) c.base[8 + i * 4 + i] = 2.0f;
  c.scale = {1.0f, 1.0f, 1.0f};
  c.params = HcParams{nullptr, nullptr, nullptr, hc, d, 24, 20, 1e-6f, 1e-6f};
  Random rng(15);
  const std::vector<float> streams = rng.Bf16Normals(hc * d);
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    Buffer s = Buffer::Of(b, streams), mix(b, 24 * 4), x(b, d * 4);
    b.HcPre(ResidentHc(b, c), s.as<float>(), 1, mix.as<float>(), x.as<float>());
    const std::vector<float> m = mix.Read<float>(), xs = x.Read<float>();
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(m[i], 0.5, 1e-5) << nb.label;
      EXPECT_NEAR(m[4 + i], 1.0, 1e-5) << nb.label;
      float row = 0, col = 0;
      for (int j = 0; j < 4; ++j) {
        row += m[8 + i * 4 + j];
        col += m[8 + j * 4 + i];
      }
      EXPECT_NEAR(row, 1.0, 1e-3) << nb.label;
      EXPECT_NEAR(col, 1.0, 1e-3) << nb.label;
      EXPECT_GT(m[8 + i * 4 + i], m[8 + i * 4 + (i + 1) % 4])
          << nb.label << ": identity-leaning base";
    }
    // x_out = bf16(Σ pre_i X_i) with pre_i = 0.5 + 1e-6.
    for (int64_t k = 0; k < d; ++k) {
      float sum = 0;
      for (int64_t i = 0; i < hc; ++i) sum += streams[i * d + k];
      EXPECT_NEAR(xs[k], 0.5 * sum, 0x1p-7 * std::fabs(0.5 * sum) + 1e-5) << nb.label << " " << k;
      EXPECT_EQ(xs[k], RoundToBf16(xs[k])) << nb.label;
    }
  }
}

// With W_fn = 0 (μ = 0) comb is Sinkhorn(row softmax of the base). Three rows peaking in the same
// column converge slowly: 19 or 21 iterations land ≥ 2·10^-4 from 20 (asserted on a double
// precision Sinkhorn below), while FP32 rounding over the 40 normalisations stays far below the
// 5·10^-5 allowed.
TEST(BackendPropertyTest, HcPreRunsExactlyTheSinkhornIterationsAsked) {
  const int64_t hc = 4, d = 64;
  HcCase c;
  c.fn.assign(static_cast<size_t>(24 * hc * d), 0.0f);
  c.base.assign(24, 0.0f);
  for (int i = 0; i < 3; ++i) c.base[8 + i * 4] = 6.0f;
  c.base[8 + 3 * 4 + 3] = 6.0f;
  c.scale = {1.0f, 1.0f, 1.0f};
  c.params = HcParams{nullptr, nullptr, nullptr, hc, d, 24, 20, 1e-6f, 1e-6f};
  auto sinkhorn = [&](int iters) {
    const double eps = 1e-6;
    std::vector<double> m(16);
    for (int i = 0; i < 4; ++i) {
      double sum = 0;
      for (int j = 0; j < 4; ++j)
        sum += m[i * 4 + j] = std::exp(static_cast<double>(c.base[8 + i * 4 + j]) - 6.0);
      for (int j = 0; j < 4; ++j) m[i * 4 + j] = m[i * 4 + j] / sum + eps;
    }
    auto columns = [&] {
      for (int j = 0; j < 4; ++j) {
        const double sum = m[j] + m[4 + j] + m[8 + j] + m[12 + j];
        for (int i = 0; i < 4; ++i) m[i * 4 + j] /= sum + eps;
      }
    };
    columns();
    for (int it = 1; it < iters; ++it) {
      for (int i = 0; i < 4; ++i) {
        const double sum = m[i * 4] + m[i * 4 + 1] + m[i * 4 + 2] + m[i * 4 + 3];
        for (int j = 0; j < 4; ++j) m[i * 4 + j] /= sum + eps;
      }
      columns();
    }
    return m;
  };
  const std::vector<double> want = sinkhorn(20), fewer = sinkhorn(19), more = sinkhorn(21);
  double to_fewer = 0, to_more = 0;
  for (int i = 0; i < 16; ++i) {
    to_fewer = std::max(to_fewer, std::fabs(want[i] - fewer[i]));
    to_more = std::max(to_more, std::fabs(want[i] - more[i]));
  }
  ASSERT_GT(std::min(to_fewer, to_more), 2e-4) << "the case must tell iteration counts apart";
  Random rng(18);
  const std::vector<float> streams = rng.Bf16Normals(hc * d);
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    Buffer s = Buffer::Of(b, streams), mix(b, 24 * 4), x(b, d * 4);
    b.HcPre(ResidentHc(b, c), s.as<float>(), 1, mix.as<float>(), x.as<float>());
    const std::vector<float> m = mix.Read<float>();
    for (int i = 0; i < 16; ++i)
      EXPECT_NEAR(m[8 + i], want[i], 5e-5) << nb.label << " comb[" << i << "]";
  }
}

TEST(BackendPropertyTest, HcPostMixesStreamsWithTheResidualOnTheRight) {
  // post = (1, 0, 0, 0), comb = a permutation: stream j ← y·post_j + X_{perm⁻¹(j)}.
  const int64_t hc = 4, d = 32;
  Random rng(16);
  const HcCase c = MakeHc(hc, d, false, rng);
  std::vector<float> mix(24, 0.0f);
  mix[4] = 1.0f;
  const int perm[4] = {1, 2, 3, 0};  // stream i goes to perm[i]
  for (int i = 0; i < 4; ++i) mix[8 + i * 4 + perm[i]] = 1.0f;
  const std::vector<float> old = rng.Bf16Normals(hc * d), y = rng.Bf16Normals(d);
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    Buffer m = Buffer::Of(b, mix), yb = Buffer::Of(b, y), s = Buffer::Of(b, old);
    b.HcPost(ResidentHc(b, c), m.as<float>(), yb.as<float>(), 1, s.as<float>());
    const std::vector<float> got = s.Read<float>();
    for (int i = 0; i < 4; ++i) {
      for (int64_t k = 0; k < d; ++k) {
        const float want = RoundToBf16((perm[i] == 0 ? y[k] : 0.0f) + old[i * d + k]);
        EXPECT_EQ(got[perm[i] * d + k], want)
            << nb.label << " stream " << perm[i] << " [" << k << "]";
      }
    }
  }
}

}  // namespace
}  // namespace strata::engine::backend_test
