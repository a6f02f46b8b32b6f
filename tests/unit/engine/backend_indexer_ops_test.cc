// engine::Backend's lightning indexer (IndexerTopK) on every CpuBackend instruction set against
// the scalar ReferenceBackend: the steps of backend_attention_ops_test.cc, then long contexts
// (thousands of keys, rows whose visible range ends around slice ends, decode rows, ties across
// slices and parts, weights of every sign pattern) and values outside the integer form. The
// chosen entries must match exactly (the reason is given at RunIndexerTopK).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/numerics.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/backend_ops_test_util.h"
#include "tests/unit/engine/reference_backend.h"

namespace strata::engine::backend_test {
namespace {

using testing::ReferenceBackend;
namespace ref = testing::ref;

struct TopK {
  std::vector<int32_t> chosen, count;
};

// Indexer queries and keys are simulated FP4 (values e·2^s with e ∈ {0, ±0.5 … ±6}) and the head
// weights BF16: every product q·k has ≤ 6 significant bits and a head's 4 blocks share a scale up
// to a small factor, so each dot product is exact in FP32 whatever the order; w·ReLU(dot) has
// ≤ 24 bits, and the heads are summed in the contract's order. So the scores — and the top-k
// choices — are identical: chosen and count must match exactly.
void RunIndexerTopK(int64_t topk, const std::vector<SeqSpec>& seqs, uint32_t seed) {
  Random rng(seed);
  const FakeLayout l = MakeLayout(128, kRopeDim, 128, 4);
  const HostStep h = MakeHostStep(l, seqs, Past::kThroughStep, rng);
  const int64_t heads = 8, dim = 128;
  std::vector<float> q = rng.Normals(h.rows * heads * dim, 0.5f);
  std::vector<float> w = rng.Normals(h.rows * heads, 2.0f);
  {
    ReferenceBackend ref;
    const Rope rope{RopeFreqs(true)};
    ref.IndexerQueries(q.data(), h.rows, heads, dim, rope.Host(), h.positions.data());
    ref.ScaleBf16(w.data(), h.rows * heads, (1.0f / std::sqrt(128.0f)) * (1.0f / std::sqrt(8.0f)));
  }
  const std::string what = absl::StrCat("IndexerTopK topk=", topk, " ", Describe(seqs));
  ForEachOptimizedBackend(
      [&](Backend& b) {
        DeviceStep step(b, h, l);
        Buffer qb = Buffer::Of(b, q), wb = Buffer::Of(b, w);
        Buffer chosen(b, h.rows * topk * 4), count(b, h.rows * 4);
        b.IndexerTopK(step.batch(), IndexerParams{heads, dim, topk, l.index_offset}, l.f,
                      qb.as<float>(), wb.as<float>(), step.pool(), chosen.as<int32_t>(),
                      count.as<int32_t>());
        return TopK{chosen.Read<int32_t>(), count.Read<int32_t>()};
      },
      [&](const TopK& want, const TopK& got) {
        ExpectSameBytes<int32_t>(want.count, got.count, what + " count");
        for (int64_t t = 0; t < h.rows; ++t) {
          const int64_t n = std::min<int64_t>(want.count[t], got.count[t]);
          ExpectSameBytes<int32_t>(
              absl::MakeConstSpan(want.chosen).subspan(t * topk, n),
              absl::MakeConstSpan(got.chosen).subspan(t * topk, n),
              absl::StrCat(what, " chosen of row ", t, " (position ", h.positions[t], ")"));
        }
      });
}

TEST(BackendIndexerTest, IndexerTopKMatchesExactly) {
  uint32_t seed = 200;
  for (int64_t topk : {16, 64}) {  // tiny, small
    for (const std::vector<SeqSpec>& seqs : Scenarios()) RunIndexerTopK(topk, seqs, seed++);
  }
}

// ---- the indexer at long contexts --------------------------------------------------------------
//
// CpuBackend decodes the keys into an integer form, scores one slice of 1024 keys at a time for
// blocks of 32 rows (or, for few rows, for parts of the keys, merged at the end), prunes keys by
// an upper bound of their score, and scores rows and keys without an exact integer form with the
// definition's loop. These cases cross all of those edges: thousands of keys, rows whose visible
// range ends just before, at and after slice ends, a decode row over 4096 keys, ties across
// slices and parts, weights of every sign pattern.

// The rows' queries (FP4 after the rotation, as IndexerQueries makes them) and head weights
// (BF16, scaled as the model scales them), with every sign pattern of the weights.
void IndexerInputs(const HostStep& h, int64_t heads, int64_t dim, Random& rng, std::vector<float>& q,
                   std::vector<float>& w) {
  q = rng.Normals(h.rows * heads * dim, 0.5f);
  w = rng.Normals(h.rows * heads, 2.0f);
  ReferenceBackend ref;
  const Rope rope{RopeFreqs(true)};
  ref.IndexerQueries(q.data(), h.rows, heads, dim, rope.Host(), h.positions.data());
  for (int64_t t = 0; t < h.rows; ++t) {
    float* wt = w.data() + t * heads;
    switch (t % 5) {
      case 1:  // every weight positive: the bound is the score
        for (int64_t i = 0; i < heads; ++i) wt[i] = std::fabs(wt[i]);
        break;
      case 2:  // every weight negative: every score ≤ 0
        for (int64_t i = 0; i < heads; ++i) wt[i] = -std::fabs(wt[i]);
        break;
      case 3:  // a zero weight and a zero query head
        wt[0] = 0;
        std::fill_n(q.begin() + (t * heads + 1) * dim, dim, 0.0f);
        break;
      default:
        break;
    }
  }
  ref.ScaleBf16(w.data(), h.rows * heads, (1.0f / std::sqrt(128.0f)) * (1.0f / std::sqrt(8.0f)));
}

// Runs IndexerTopK on the reference and on `backends` and checks chosen and count exactly.
void ExpectIndexerTopK(std::vector<NamedBackend>& backends, const FakeLayout& l, const HostStep& h,
                       int64_t heads, int64_t dim, int64_t topk, const std::vector<float>& q,
                       const std::vector<float>& w, const std::string& what) {
  auto run = [&](Backend& b) {
    DeviceStep step(b, h, l);
    Buffer qb = Buffer::Of(b, q), wb = Buffer::Of(b, w);
    Buffer chosen(b, h.rows * topk * 4), count(b, h.rows * 4);
    b.IndexerTopK(step.batch(), IndexerParams{heads, dim, topk, l.index_offset}, l.f, qb.as<float>(),
                  wb.as<float>(), step.pool(), chosen.as<int32_t>(), count.as<int32_t>());
    return TopK{chosen.Read<int32_t>(), count.Read<int32_t>()};
  };
  ReferenceBackend reference;
  const TopK want = run(reference);
  for (NamedBackend& nb : backends) {
    SCOPED_TRACE(nb.label);
    const TopK got = run(*nb.backend);
    ExpectSameBytes<int32_t>(want.count, got.count, what + " count");
    for (int64_t t = 0; t < h.rows; ++t) {
      const int64_t n = std::min<int64_t>(want.count[t], got.count[t]);
      ExpectSameBytes<int32_t>(absl::MakeConstSpan(want.chosen).subspan(t * topk, n),
                               absl::MakeConstSpan(got.chosen).subspan(t * topk, n),
                               absl::StrCat(what, " chosen of row ", t, " (position ",
                                            h.positions[t], ")"));
    }
  }
}

// Rows whose visible entries end around the slice ends 1024, 2048 and 3072 (positions 4j−1 see j
// entries), a block of more than 32 rows, and a decode row over 4096 entries.
const std::vector<SeqSpec>& LongIndexerSteps() {
  static const auto* kSeqs =
      new std::vector<SeqSpec>{{4088, 14}, {8185, 9}, {12260, 40}, {16383, 1}};
  return *kSeqs;
}

TEST(BackendIndexerTest, IndexerTopKMatchesAtLongContexts) {
  const FakeLayout l = MakeLayout(128, kRopeDim, 128, 4);
  const int64_t heads = 8, dim = 128;
  std::vector<NamedBackend> backends = OptimizedBackends();
  uint32_t seed = 300;
  for (int64_t topk : {16, 64}) {
    Random rng(seed++);
    const HostStep h = MakeHostStep(l, LongIndexerSteps(), Past::kThroughStep, rng);
    std::vector<float> q, w;
    IndexerInputs(h, heads, dim, rng, q, w);
    ExpectIndexerTopK(backends, l, h, heads, dim, topk, q, w,
                      absl::StrCat("IndexerTopK long topk=", topk));
  }
}

TEST(BackendIndexerTest, IndexerTopKBreaksLongTiesTowardTheLowerEntry) {
  // Only 7 distinct keys, each repeated all over the sequence: every score ties with hundreds of
  // others, across slices and key parts, and the lower entries must win.
  const FakeLayout l = MakeLayout(128, kRopeDim, 128, 4);
  const int64_t heads = 8, dim = 128;
  std::vector<NamedBackend> backends = OptimizedBackends();
  Random rng(310);
  HostStep h = MakeHostStep(l, LongIndexerSteps(), Past::kThroughStep, rng);
  std::vector<std::vector<uint8_t>> distinct;
  for (int i = 0; i < 7; ++i) {
    std::vector<float> v = rng.Bf16Normals(dim);
    distinct.emplace_back(static_cast<size_t>(l.f.index_bytes));
    ref::EncodeIndexerEntry(v.data(), dim, l.f.index_bytes, distinct.back().data());
  }
  for (size_t s = 0; s < h.seqs.size(); ++s) {
    for (int64_t j = 0; j < (h.seqs[s].start + h.seqs[s].n) / 4; ++j) {
      const std::vector<uint8_t>& key = distinct[static_cast<size_t>(rng.Int(0, 6))];
      std::memcpy(h.Entry(l, s, l.index_offset, 4, l.f.index_bytes, j), key.data(), key.size());
    }
  }
  std::vector<float> q, w;
  IndexerInputs(h, heads, dim, rng, q, w);
  ExpectIndexerTopK(backends, l, h, heads, dim, 64, q, w, "IndexerTopK ties");
}

TEST(BackendIndexerTest, IndexerTopKScoresValuesOutsideTheIntegerFormByTheDefinition) {
  // Keys whose block scales are more than 8× apart or out of the exponent range, queries that are
  // not FP4 values, weights too small or too large for the fast path: CpuBackend scores these with
  // the definition's loop, so they match the reference exactly. (Only the CPU backends: elsewhere
  // a dot of such values may be summed in another order, which MODEL.md §5 allows.)
  const FakeLayout l = MakeLayout(128, kRopeDim, 128, 4);
  const int64_t heads = 8, dim = 128;
  std::vector<NamedBackend> backends;
  for (NamedBackend& nb : OptimizedBackends()) {
    if (absl::StartsWith(nb.label, "cpu/")) backends.push_back(std::move(nb));
  }
  Random rng(320);
  HostStep h = MakeHostStep(l, {{4088, 14}, {12300, 3}, {16383, 1}}, Past::kThroughStep, rng);
  for (size_t s = 0; s < h.seqs.size(); ++s) {
    for (int64_t j = 0; j < (h.seqs[s].start + h.seqs[s].n) / 4; j += 37) {
      uint8_t* e = h.Entry(l, s, l.index_offset, 4, l.f.index_bytes, j);
      const int kind = static_cast<int>(j / 37 % 3);
      if (kind == 0) e[dim / 2 + 1] = static_cast<uint8_t>(e[dim / 2] + 5);  // blocks 32× apart
      if (kind == 1) e[dim / 2 + 2] = 200;                                   // ek > 40
      if (kind == 2) e[dim / 2 + 3] = 40;                                    // ek < −40
      e[0] = 0x77;  // block 0 nonzero: its scale counts
      e[16] = 0x17, e[32] = 0x71, e[48] = 0x33;
    }
  }
  std::vector<float> q, w;
  IndexerInputs(h, heads, dim, rng, q, w);
  for (int64_t t = 0; t < h.rows; t += 3) {
    // Queries off the FP4 grid: per head one value 1 and the others ±0.0155, just below the 7-bit
    // step of 1/64 below it (an integer form from the largest value would lose them all).
    for (int64_t i = 0; i < heads * dim; ++i) {
      q[static_cast<size_t>(t * heads * dim + i)] =
          i % dim == 0 ? 1.0f : (rng.Int(0, 1) ? 0.0155f : -0.0155f);
    }
  }
  for (int64_t t = 1; t < h.rows; t += 4) w[static_cast<size_t>(t * heads + 2)] = 1e-20f;
  for (int64_t t = 2; t < h.rows; t += 5) w[static_cast<size_t>(t * heads + 3)] = 3e6f;
  ExpectIndexerTopK(backends, l, h, heads, dim, 16, q, w, "IndexerTopK outside the integer form");
}

}  // namespace
}  // namespace strata::engine::backend_test
