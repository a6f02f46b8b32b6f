// engine::Backend's MoE ops (routing, SwiGLU, the routed experts) on every CpuBackend instruction
// set against the scalar ReferenceBackend, plus their properties on every backend. See
// backend_ops_test.cc for the general rule of the tolerances.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
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

// ---- MoE ---------------------------------------------------------------------------------------

struct Routes {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// The ids must match exactly (a top-k choice). s = sqrt(softplus(g)) is elementwise, but a backend
// may take exp/log1p/sqrt from a vector library a few ulps off the C library's, and the weights
// (ratios of such values, and of their sum) then move by up to a few tens of ulps: 2^-18
// relative (64 ulps) is allowed. With random logits no two biased scores come that close, so the
// choice itself does not move.
TEST(BackendMoeTest, RouteExpertsMatchesReference) {
  Random rng(11);
  struct Case {
    int64_t experts, k;
    bool hash;
  };
  const int64_t vocab = 100;
  for (const Case& c :
       {Case{8, 2, false}, Case{64, 6, false}, Case{8, 2, true}, Case{64, 6, true}}) {
    const std::vector<float> bias = rng.Normals(c.experts, 0.1f);
    std::vector<int32_t> table;
    for (int64_t v = 0; v < vocab; ++v) {
      std::vector<int32_t> all(static_cast<size_t>(c.experts));
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng.gen());
      table.insert(table.end(), all.begin(), all.begin() + c.k);
    }
    for (int64_t rows : kRows) {
      std::vector<float> logits = rng.Normals(rows * c.experts, 2.0f);
      logits[0] = 25.0f;  // past softplus's threshold
      logits[1] = -30.0f;
      std::vector<int32_t> tokens;
      for (int64_t t = 0; t < rows; ++t)
        tokens.push_back(static_cast<int32_t>(rng.Int(0, vocab - 1)));
      ForEachOptimizedBackend(
          [&](Backend& b) {
            RouterParams p{c.experts, c.k, c.hash ? nullptr : Resident(b, bias),
                           c.hash ? Resident(b, table) : nullptr, 1.5f};
            Buffer l = Buffer::Of(b, logits), tk = Buffer::Of(b, tokens);
            Buffer ids(b, rows * c.k * 4), w(b, rows * c.k * 4);
            b.RouteExperts(p, l.as<float>(), c.hash ? tk.as<int32_t>() : nullptr, rows,
                           ids.as<int32_t>(), w.as<float>());
            return Routes{ids.Read<int32_t>(), w.Read<float>()};
          },
          [&](const Routes& want, const Routes& got) {
            const std::string what = absl::StrCat("RouteExperts E=", c.experts,
                                                  c.hash ? " hash" : " score", " rows=", rows);
            ExpectSameBytes<int32_t>(want.ids, got.ids, what + " ids");
            ExpectClose(want.weights, got.weights,
                        {[&](size_t i) { return 0x1p-18 * std::fabs(want.weights[i]); }, 1.0},
                        what + " weights");
          });
    }
  }
}

// silu, clamps, the weight and one rounding, each elementwise and fixed by the contract: bit for
// bit. u and v are FP32 linear outputs (not BF16) and reach past ±limit.
TEST(BackendMoeTest, SwiGluIsBitExact) {
  Random rng(12);
  for (int64_t inter : {77, 128, 512}) {
    for (int64_t rows : kRows) {
      const std::vector<float> u = rng.Normals(rows * inter, 6.0f),
                               v = rng.Normals(rows * inter, 6.0f);
      std::vector<float> weights = rng.Normals(rows, 0.5f);
      for (float& w : weights) w = std::fabs(w) + 0.1f;
      for (bool weighted : {false, true}) {
        ForEachOptimizedBackend(
            [&](Backend& b) {
              Buffer ub = Buffer::Of(b, u), vb = Buffer::Of(b, v), wb = Buffer::Of(b, weights);
              Buffer h(b, rows * inter * 4);
              b.SwiGlu(ub.as<float>(), vb.as<float>(), rows, inter,
                       weighted ? wb.as<float>() : nullptr, 10.0f, h.as<float>());
              return h.Read<float>();
            },
            [&](const std::vector<float>& want, const std::vector<float>& got) {
              ExpectBitIdentical(want, got,
                                 absl::StrCat("SwiGlu inter=", inter, " rows=", rows,
                                              weighted ? " weighted" : ""));
            });
      }
    }
  }
}

struct ExpertSet {
  std::vector<TestWeight> w1, w3, w2;
  std::vector<ExpertWeights> Views(Backend& b) const {
    std::vector<ExpertWeights> v;
    for (size_t e = 0; e < w1.size(); ++e) {
      v.push_back({ResidentView(b, w1[e]), ResidentView(b, w3[e]), ResidentView(b, w2[e])});
    }
    return v;
  }
};

ExpertSet MakeExperts(WeightFormat format, int64_t count, int64_t d, int64_t inter, Random& rng) {
  ExpertSet s;
  for (int64_t e = 0; e < count; ++e) {
    s.w1.push_back(MakeWeight(format, inter, d, rng));
    s.w3.push_back(MakeWeight(format, inter, d, rng));
    s.w2.push_back(MakeWeight(format, d, inter, rng));
  }
  return s;
}

// out[t] = Σ_j y_j, y_j = bf16(w2·q(h_j)) in increasing expert id (q: w2's E4M3 activation
// quantization). What a reordered FP32 sum can change:
// (a) y_j's dot moves by FP32 ulps, so bf16(y_j) by at most one BF16 ulp: a row whose upstream
//     values agree is within Σ_j ulp(y_j) ≤ 2^-7·Σ_j |y_j| plus FP32 noise ("clean");
// (b) rarely, u or v (dots of d terms) lands on the other side of a BF16 rounding, h_l moves by
//     one BF16 ulp and, if that crosses an E4M3 midpoint, q_l by one E4M3 step (≤ 2^-3·|q_l|):
//     the whole row then moves by up to 2^-3·max_l |w2[i,l]·q_l| per expert. (FP4 × E4M3 products
//     have so few bits that those dots are exact in any order, so with FP4 experts this needs an
//     FP32 difference elsewhere; FP8 dots do round.)
// So ≤ 2% of the rows (at least one) may be outside (a), each value within 2^-2·Σ_j max_l
// |w2_j[i,l]·q_jl| (two such steps) of the reference, and in the clean rows ≤ 3% of the values
// may differ at all (e.g. experts summed out of id order move most values by FP32 ulps).
TEST(BackendMoeTest, RoutedExpertsMatchReference) {
  Random rng(13);
  struct Case {
    WeightFormat format;
    int64_t experts, k, d, inter, max_rows;
  };
  // tiny's experts, small's (fewer of them, and fewer rows: the scalar reference is slow), and
  // FP8 experts (the shared expert's format).
  for (const Case& c : {Case{WeightFormat::kFp4Block, 8, 2, 256, 128, 130},
                        Case{WeightFormat::kFp4Block, 16, 6, 1024, 512, 17},
                        Case{WeightFormat::kFp8Block, 3, 1, 256, 128, 130}}) {
    const ExpertSet set = MakeExperts(c.format, c.experts, c.d, c.inter, rng);
    for (int64_t rows : kRows) {
      if (rows > c.max_rows) continue;
      const std::vector<float> x = rng.Bf16Normals(rows * c.d);
      std::vector<int32_t> ids;
      std::vector<float> weights;
      for (int64_t t = 0; t < rows; ++t) {
        std::vector<int32_t> all(static_cast<size_t>(c.experts));
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng.gen());  // not sorted: the op orders them
        ids.insert(ids.end(), all.begin(), all.begin() + c.k);
        for (int64_t j = 0; j < c.k; ++j) weights.push_back(std::fabs(rng.Normal(0.5f)) + 0.1f);
      }
      // Σ_j |y_j| and Σ_j max_l |w2_j[i,l]·q_jl| per value, from the reference's experts one by
      // one.
      std::vector<float> magnitude(static_cast<size_t>(rows * c.d), 0.0f),
          step(magnitude.size(), 0.0f);
      {
        ReferenceBackend ref;
        std::vector<float> u(static_cast<size_t>(c.inter)), v(u.size()), h(u.size()),
            y(static_cast<size_t>(c.d));
        std::vector<float> q, scale;
        for (int64_t t = 0; t < rows; ++t) {
          for (int64_t j = 0; j < c.k; ++j) {
            const TestWeight& w2 = set.w2[ids[t * c.k + j]];
            ref.Linear(set.w1[ids[t * c.k + j]].view, x.data() + t * c.d, 1, u.data());
            ref.Linear(set.w3[ids[t * c.k + j]].view, x.data() + t * c.d, 1, v.data());
            ref.SwiGlu(u.data(), v.data(), 1, c.inter, &weights[t * c.k + j], 10.0f, h.data());
            ref.Linear(w2.view, h.data(), 1, y.data());
            testing::QuantizeActivationRow(h.data(), c.inter, q, scale);
            for (int64_t i = 0; i < c.d; ++i) {
              magnitude[t * c.d + i] += std::fabs(RoundToBf16(y[i]));
              float largest = 0;
              for (int64_t l = 0; l < c.inter; ++l) {
                largest = std::max(largest, std::fabs(ReferenceBackend::Weight(w2.view, i, l) *
                                                      q[l] * scale[l / 128]));
              }
              step[t * c.d + i] += largest;
            }
          }
        }
      }
      ForEachOptimizedBackend(
          [&](Backend& b) {
            const std::vector<ExpertWeights> views = set.Views(b);
            Buffer xb = Buffer::Of(b, x), idb = Buffer::Of(b, ids), wb = Buffer::Of(b, weights);
            Buffer out(b, rows * c.d * 4);
            const absl::Status s = b.RoutedExperts(views, xb.as<float>(), rows, idb.as<int32_t>(),
                                                   wb.as<float>(), c.k, 10.0f, out.as<float>());
            EXPECT_TRUE(s.ok()) << s;
            return out.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            const std::string what = absl::StrCat("RoutedExperts ", WeightFormatName(c.format),
                                                  " E=", c.experts, " rows=", rows);
            int64_t moved_rows = 0, differing = 0;
            for (int64_t t = 0; t < rows; ++t) {
              bool clean = true;
              int64_t row_differing = 0;
              for (int64_t i = t * c.d; i < (t + 1) * c.d; ++i) {
                const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
                clean = clean && diff <= 0x1p-7 * magnitude[i] + DotBound(c.k, magnitude[i]);
                row_differing += got[i] != want[i];
              }
              if (clean) {
                differing += row_differing;
                continue;
              }
              ++moved_rows;
              for (int64_t i = t * c.d; i < (t + 1) * c.d; ++i) {
                const double tol =
                    0x1p-7 * magnitude[i] + 0x1p-2 * step[i] + DotBound(c.k, magnitude[i]);
                ASSERT_LE(std::fabs(static_cast<double>(got[i]) - want[i]), tol)
                    << what << " row " << t << " [" << i - t * c.d << "]: " << got[i] << " vs "
                    << want[i];
              }
            }
            EXPECT_LE(moved_rows, std::max<int64_t>(1, rows / 50))
                << what << ": rows outside one BF16 ulp per expert";
            EXPECT_LE(differing, std::max<int64_t>(1, (rows - moved_rows) * c.d * 3 / 100))
                << what << ": values that differ in the other rows";
          });
    }
  }
}

// CpuBackend runs the experts' linears of a step in one parallel pass per stage when Linear would
// use its dot form for them (every expert at decode): each expert's output must be bit for bit
// what the backend's own Linear, SwiGlu, Linear give, summed in expert id order, on every
// instruction set, with and without batch invariance (without it, experts with many rows take
// the strip form one by one while the others still go in the pass), with 2 and 3 threads.
TEST(BackendMoeTest, CpuRoutedExpertsEqualTheBackendsOwnLinears) {
  Random rng(15);
  const int64_t experts = 6, k = 2, d = 256, inter = 128;
  const ExpertSet set = MakeExperts(WeightFormat::kFp4Block, experts, d, inter, rng);
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    if (!CpuIsaSupported(isa)) continue;
    for (bool invariant : {true, false}) {
      for (int threads : {2, 3}) {
        auto created =
            CpuBackend::Create({.threads = threads, .isa = isa, .batch_invariant = invariant});
        ASSERT_TRUE(created.ok()) << created.status();
        CpuBackend& b = **created;
        const std::vector<ExpertWeights> views = set.Views(b);
        for (int64_t rows : {int64_t{1}, int64_t{3}, int64_t{17}, int64_t{400}}) {
          const std::string what = absl::StrCat(CpuIsaName(isa), invariant ? " invariant" : "",
                                                " threads=", threads, " rows=", rows);
          const std::vector<float> x = rng.Bf16Normals(rows * d);
          std::vector<int32_t> ids;
          std::vector<float> weights;
          for (int64_t t = 0; t < rows; ++t) {
            // Expert 0 on every row (many rows: the strip form without invariance), one other.
            ids.push_back(0);
            ids.push_back(static_cast<int32_t>(rng.Int(1, experts - 1)));
            weights.push_back(std::fabs(rng.Normal(0.5f)) + 0.1f);
            weights.push_back(std::fabs(rng.Normal(0.5f)) + 0.1f);
          }
          std::vector<float> got(static_cast<size_t>(rows * d));
          ASSERT_TRUE(b.RoutedExperts(views, x.data(), rows, ids.data(), weights.data(), k, 10.0f,
                                      got.data())
                          .ok());
          std::vector<float> want(got.size(), 0.0f);
          for (int64_t e = 0; e < experts; ++e) {
            std::vector<float> xs, ws;
            std::vector<int64_t> row_of;
            for (int64_t t = 0; t < rows; ++t) {
              for (int64_t j = 0; j < k; ++j) {
                if (ids[t * k + j] != e) continue;
                xs.insert(xs.end(), x.begin() + t * d, x.begin() + (t + 1) * d);
                ws.push_back(weights[t * k + j]);
                row_of.push_back(t);
              }
            }
            const int64_t m = static_cast<int64_t>(row_of.size());
            if (m == 0) continue;
            std::vector<float> u(static_cast<size_t>(m * inter)), v(u.size()),
                y(static_cast<size_t>(m * d));
            b.Linear(views[e].w1, xs.data(), m, u.data());
            b.Linear(views[e].w3, xs.data(), m, v.data());
            b.SwiGlu(u.data(), v.data(), m, inter, ws.data(), 10.0f, u.data());
            b.Linear(views[e].w2, u.data(), m, y.data());
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t c = 0; c < d; ++c) want[row_of[i] * d + c] += RoundToBf16(y[i * d + c]);
            }
          }
          ExpectBitIdentical(want, got, what);
        }
      }
    }
  }
}

TEST(BackendMoeTest, RoutedExpertsRejectAnIdOutOfRange) {
  Random rng(14);
  const ExpertSet set = MakeExperts(WeightFormat::kFp4Block, 4, 256, 128, rng);
  const std::vector<float> x = rng.Bf16Normals(2 * 256);
  const std::vector<float> weights = {0.5f, 0.5f, 0.5f, 0.5f};
  for (int32_t bad : {-1, 4}) {
    const std::vector<int32_t> ids = {0, 1, 2, bad};
    for (NamedBackend& nb : AllBackends()) {
      Backend& b = *nb.backend;
      const std::vector<ExpertWeights> views = set.Views(b);
      Buffer xb = Buffer::Of(b, x), idb = Buffer::Of(b, ids), wb = Buffer::Of(b, weights),
             out(b, 2 * 256 * 4);
      const absl::Status s = b.RoutedExperts(views, xb.as<float>(), 2, idb.as<int32_t>(),
                                             wb.as<float>(), 2, 10.0f, out.as<float>());
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
          << nb.label << " id " << bad << ": " << s;
    }
  }
}

// ---- properties of the ops, on every backend --------------------------------------------------

TEST(BackendPropertyTest, RouteExpertsBreaksTiesTowardTheLowerId) {
  // Equal logits and biases: every score ties, so the top k are 0 … k−1 and share the weight.
  const int64_t experts = 8, k = 3;
  const std::vector<float> logits(experts, 0.7f), bias(experts, 0.0f);
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    Buffer l = Buffer::Of(b, logits), ids(b, k * 4), w(b, k * 4);
    b.RouteExperts(RouterParams{experts, k, Resident(b, bias), nullptr, 1.5f}, l.as<float>(),
                   nullptr, 1, ids.as<int32_t>(), w.as<float>());
    EXPECT_EQ(ids.Read<int32_t>(), (std::vector<int32_t>{0, 1, 2})) << nb.label;
    for (float v : w.Read<float>()) EXPECT_FLOAT_EQ(v, 0.5f) << nb.label;
  }
}

}  // namespace
}  // namespace strata::engine::backend_test
