// engine::Backend's attention-side ops (RoPE, the query heads, the indexer queries, KV entries,
// the compressors, sparse attention, the window ring; the lightning indexer is in
// backend_indexer_ops_test.cc) on every CpuBackend
// instruction set against the scalar ReferenceBackend, plus the ops' own properties on every
// backend. The sequence ops run on steps of several sequences (Scenarios(): prefill chunks next
// to decode tokens, at positions across window, group and block edges) over a fake KV pool whose
// past (window ring, carry rows, compressed entries) is filled with valid encoded entries, and
// whose other bytes are random, so a read or write of anything outside the contract shows up.
// The tolerances are justified where they are used; see backend_ops_test.cc for the general rule.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
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

// Positions for `rows` rows: the edges first (0, 1, window and block edges, YaRN's original
// length, the model's last position), then random ones.
std::vector<int64_t> Positions(int64_t rows, Random& rng) {
  static constexpr int64_t kEdges[] = {0, 1048575, 127, 128, 3, 65536, 1, 383};
  std::vector<int64_t> p;
  for (int64_t t = 0; t < rows; ++t) {
    p.push_back(t < 8 ? kEdges[t] : rng.Int(0, 1048575));
  }
  return p;
}

// ---- RoPE, query heads, indexer queries, KV entries, ape: per row, no long sums ----------------

// Each value is one rotation formula with one rounding and cos/sin of an FP32 angle: bit for bit.
TEST(BackendRopeTest, RopeIsBitExact) {
  Random rng(20);
  for (bool compressed : {false, true}) {
    const Rope rope{RopeFreqs(compressed)};
    for (int64_t stride : {64, 128, 192, 576}) {
      for (int64_t rows : kRows) {
        const std::vector<float> x = rng.Bf16Normals(rows * stride);
        const std::vector<int64_t> positions = Positions(rows, rng);
        ForEachOptimizedBackend(
            [&](Backend& b) {
              Buffer xb = Buffer::Of(b, x), pb = Buffer::Of(b, positions);
              b.Rope(xb.as<float>(), rows, stride, rope.Table(b), pb.as<int64_t>());
              return xb.Read<float>();
            },
            [&](const std::vector<float>& want, const std::vector<float>& got) {
              ExpectBitIdentical(
                  want, got,
                  absl::StrCat("Rope stride=", stride, " rows=", rows, compressed ? " yarn" : ""));
            });
      }
    }
  }
}

// Per head the only order-dependent value is Σ bf16(u²) (dim positive terms), and it is rounded
// to BF16 at once: unless that rounding flips (a few-ulp difference within 2^-15 of a midpoint,
// ~2^-14 of the heads), the head's results are bit-identical. When it flips, g = bf16(1/sqrt(s))
// moves by at most one BF16 ulp (2^-7 relative), every u·g by that plus its rounding, and RoPE
// mixes pairs of such values: within 2^-5 of the head's largest value. ≤ 1% of heads (at least
// one) may differ.
TEST(BackendRopeTest, QueryHeadsMatchReference) {
  Random rng(21);
  const Rope rope{RopeFreqs(false)};
  struct Shape {
    int64_t heads, dim;
  };
  for (const Shape& s : {Shape{4, 128}, Shape{8, 256}, Shape{3, 512}}) {
    for (int64_t rows : kRows) {
      // Linear outputs (FP32), each head at its own scale.
      std::vector<float> q = rng.Normals(rows * s.heads * s.dim);
      for (int64_t h = 0; h < rows * s.heads; ++h) {
        const float scale = std::ldexp(1.0f, static_cast<int>(rng.Int(-6, 6)));
        for (int64_t i = 0; i < s.dim; ++i) q[h * s.dim + i] *= scale;
      }
      const std::vector<int64_t> positions = Positions(rows, rng);
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer qb = Buffer::Of(b, q), pb = Buffer::Of(b, positions);
            b.QueryHeads(qb.as<float>(), rows, s.heads, s.dim, 1e-6f, rope.Table(b),
                         pb.as<int64_t>());
            return qb.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            const std::string what =
                absl::StrCat("QueryHeads ", s.heads, "x", s.dim, " rows=", rows);
            int64_t moved = 0;
            for (int64_t h = 0; h < rows * s.heads; ++h) {
              const auto first = want.begin() + h * s.dim;
              if (std::equal(first, first + s.dim, got.begin() + h * s.dim)) continue;
              ++moved;
              float largest = 0;
              for (int64_t i = 0; i < s.dim; ++i)
                largest = std::max(largest, std::fabs(want[h * s.dim + i]));
              for (int64_t i = h * s.dim; i < (h + 1) * s.dim; ++i) {
                ASSERT_LE(std::fabs(got[i] - want[i]), 0x1p-5 * largest)
                    << what << " [" << i << "]";
              }
            }
            EXPECT_LE(moved, std::max<int64_t>(1, rows * s.heads / 100))
                << what << ": heads that differ";
          });
    }
  }
}

// bf16, RoPE, the butterfly in the contract's order, one scaling and the FP4 simulation: every
// step is fixed, so the values agree exactly (compared as numbers: an FP4 zero's sign is
// immaterial).
TEST(BackendRopeTest, IndexerQueriesAreExact) {
  Random rng(22);
  const Rope rope{RopeFreqs(true)};
  struct Shape {
    int64_t heads, dim;
  };
  for (const Shape& s : {Shape{8, 128}, Shape{3, 64}, Shape{2, 256}}) {
    for (int64_t rows : kRows) {
      const std::vector<float> q = rng.Normals(rows * s.heads * s.dim, 0.5f);
      const std::vector<int64_t> positions = Positions(rows, rng);
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer qb = Buffer::Of(b, q), pb = Buffer::Of(b, positions);
            b.IndexerQueries(qb.as<float>(), rows, s.heads, s.dim, rope.Table(b), pb.as<int64_t>());
            return qb.Read<float>();
          },
          [&](const std::vector<float>& want, const std::vector<float>& got) {
            ExpectSameValues(want, got,
                             absl::StrCat("IndexerQueries ", s.heads, "x", s.dim, " rows=", rows));
          });
    }
  }
}

KvEntryFormat MainFormat(int64_t head_dim) { return MakeLayout(head_dim, kRopeDim, 128, 0).f; }

struct Encoded {
  std::vector<float> values;
  std::vector<uint8_t> bytes;
};

// The codes and scales are fixed functions of each block: bytes and simulated values bit for bit.
TEST(BackendKvTest, EncodeMainEntriesIsBitExact) {
  Random rng(23);
  for (int64_t head_dim : {128, 256, 512}) {
    const KvEntryFormat f = MainFormat(head_dim);
    for (int64_t rows : kRows) {
      std::vector<float> v = rng.Bf16Normals(rows * head_dim);
      // Blocks at the edges of the scales: zeros (the amax floor), tiny values (subnormal codes),
      // large ones, an amax exactly 448·2^k (the ceil(log2) edge), values past 448 per scale.
      for (int64_t t = 0; t < rows; ++t) {
        float* row = v.data() + t * head_dim;
        switch (t % 5) {
          case 0:
            std::fill(row, row + 64, 0.0f);
            break;
          case 1:
            for (int i = 0; i < 64; ++i) row[i] = RoundToBf16(row[i] * 1e-6f);
            break;
          case 2:
            for (int i = 0; i < 64; ++i) row[i] = RoundToBf16(row[i] * 3e4f);
            break;
          case 3:
            row[7] = 448.0f * 0x1p-10f;
            for (int i = 0; i < 64; ++i) row[i] = std::clamp(row[i], -0.4f, 0.4375f);
            break;
          default:
            break;
        }
      }
      ForEachOptimizedBackend(
          [&](Backend& b) {
            Buffer vb = Buffer::Of(b, v), out(b, rows * f.main_bytes);
            b.EncodeMainEntries(vb.as<float>(), rows, f, out.as<uint8_t>());
            return Encoded{vb.Read<float>(), out.Read<uint8_t>()};
          },
          [&](const Encoded& want, const Encoded& got) {
            const std::string what =
                absl::StrCat("EncodeMainEntries dim=", head_dim, " rows=", rows);
            ExpectSameBytes<uint8_t>(want.bytes, got.bytes, what + " bytes");
            ExpectBitIdentical(want.values, got.values, what + " values");
          });
    }
  }
}

TEST(BackendKvTest, AddApeIsBitExact) {
  Random rng(24);
  for (int64_t ratio : {4, 128}) {
    for (int64_t width : {256, 512, 130}) {
      const std::vector<float> ape = rng.Normals(ratio * width, 0.1f);
      for (int64_t rows : kRows) {
        const std::vector<float> z = rng.Normals(rows * width);
        const std::vector<int64_t> positions = Positions(rows, rng);
        ForEachOptimizedBackend(
            [&](Backend& b) {
              Buffer zb = Buffer::Of(b, z), pb = Buffer::Of(b, positions);
              b.AddApe(zb.as<float>(), rows, width, Resident(b, ape), ratio, pb.as<int64_t>());
              return zb.Read<float>();
            },
            [&](const std::vector<float>& want, const std::vector<float>& got) {
              ExpectBitIdentical(
                  want, got,
                  absl::StrCat("AddApe ratio=", ratio, " width=", width, " rows=", rows));
            });
      }
    }
  }
}

// ---- the sequence ops --------------------------------------------------------------------------

struct StepBytes {
  std::vector<uint8_t> pool;
  std::vector<std::vector<uint8_t>> states;
};

StepBytes ReadStep(const DeviceStep& step, size_t seqs) {
  StepBytes out{step.PoolBytes(), {}};
  for (size_t s = 0; s < seqs; ++s) out.states.push_back(step.StateBytes(s));
  return out;
}

// Byte ranges [begin, end) of a record.
struct Range {
  int64_t begin, end;
};

// Compares the bytes outside `ranges` of two copies of a record exactly, and the reference's with
// the bytes before the op: nothing but the ranges may be written.
void CompareOutside(const std::vector<uint8_t>& before, const std::vector<uint8_t>& want,
                    const std::vector<uint8_t>& got, std::vector<Range> ranges,
                    const std::string& what) {
  ASSERT_EQ(want.size(), got.size());
  std::sort(ranges.begin(), ranges.end(), [](Range a, Range b) { return a.begin < b.begin; });
  int64_t at = 0;
  auto outside = [&](int64_t end) {
    const absl::Span<const uint8_t> w = absl::MakeConstSpan(want).subspan(at, end - at);
    ExpectSameBytes<uint8_t>(absl::MakeConstSpan(before).subspan(at, end - at), w,
                             absl::StrCat(what, " reference's untouched bytes from ", at));
    ExpectSameBytes<uint8_t>(w, absl::MakeConstSpan(got).subspan(at, end - at),
                             absl::StrCat(what, " untouched bytes from ", at));
  };
  for (const Range& r : ranges) {
    outside(r.begin);
    at = r.end;
  }
  outside(static_cast<int64_t>(want.size()));
}

// The new entries of a Compress step: (sequence, group) for every group whose last position is new.
std::vector<std::pair<size_t, int64_t>> CompletedGroups(const HostStep& h, int64_t ratio) {
  std::vector<std::pair<size_t, int64_t>> out;
  for (size_t s = 0; s < h.seqs.size(); ++s) {
    for (int64_t q = h.seqs[s].start; q < h.seqs[s].start + h.seqs[s].n; ++q) {
      if ((q + 1) % ratio == 0) out.emplace_back(s, q / ratio);
    }
  }
  return out;
}

// Tolerances of a Compress entry, decoded. The pooled value bf16(Σ p_i·a_i) depends on the order
// of the softmax sums and on exp's last bits, so it can land one BF16 ulp away; RMSNorm's
// statistic then moves by ~2^-16 and other values may flip one BF16 ulp as well, and RoPE mixes
// pairs of such values. So a stored value can move:
//  - main FP8 part: by one E4M3 step (≤ 2^-3 of its magnitude, or 2^-9 of the block scale in the
//    subnormal range; if the block's amax crosses a power of two the scale changes, and every
//    value still moves by at most one step of the coarser grid);
//  - main BF16 RoPE part: by 2 BF16 ulps plus 2^-6 of its pair's magnitude;
//  - indexer FP4 (after the Hadamard rotation, which spreads one flipped input over all values):
//    to a neighbouring grid value, ≤ max(0.5, |v|/2) × the block scale.
// An entry with a flip upstream is rare (~2^-6 of the entries for the few-ulp differences seen),
// and even then only a few of its values move: ≤ 2% of the values may differ.
void CompareEntries(const FakeLayout& l, bool indexer,
                    const std::vector<const uint8_t*>& want_entries,
                    const std::vector<const uint8_t*>& got_entries, const std::string& what) {
  const KvEntryFormat& f = l.f;
  const int64_t dim = indexer ? f.index_dim : l.head_dim;
  std::vector<float> want, got, bound;
  std::vector<float> a(static_cast<size_t>(dim)), b(static_cast<size_t>(dim));
  for (size_t e = 0; e < want_entries.size(); ++e) {
    const uint8_t* wa = want_entries[e];
    const uint8_t* ga = got_entries[e];
    if (indexer) {
      ref::DecodeIndexerEntry(wa, dim, a.data());
      ref::DecodeIndexerEntry(ga, dim, b.data());
    } else {
      ref::DecodeMainEntry(wa, f, a.data());
      ref::DecodeMainEntry(ga, f, b.data());
    }
    for (int64_t i = 0; i < dim; ++i) {
      const double larger = std::max(std::fabs(a[i]), std::fabs(b[i]));
      double tol;
      if (indexer) {
        const double s =
            std::max(Ue8m0ToFloat(wa[dim / 2 + i / 32]), Ue8m0ToFloat(ga[dim / 2 + i / 32]));
        tol = std::max(0.5 * s, larger / 2);
      } else if (i < f.nope) {
        const double s =
            std::max(Ue8m0ToFloat(wa[f.nope + i / 64]), Ue8m0ToFloat(ga[f.nope + i / 64]));
        tol = 0x1p-3 * larger + 0x1p-9 * s;
      } else {
        const int64_t pair = f.nope + ((i - f.nope) & ~int64_t{1});
        tol = 2 * Bf16Ulp(static_cast<float>(larger)) + 0x1p-6 * std::hypot(a[pair], a[pair + 1]);
      }
      want.push_back(a[i]);
      got.push_back(b[i]);
      bound.push_back(static_cast<float>(tol));
    }
  }
  ExpectClose(want, got, {[&](size_t i) { return static_cast<double>(bound[i]); }, 0.02}, what);
}

struct CompressCase {
  int64_t ratio;
  bool indexer;
  int64_t head_dim;
};

void RunCompress(const CompressCase& c, const std::vector<SeqSpec>& seqs, uint32_t seed) {
  Random rng(seed);
  const FakeLayout l = MakeLayout(c.head_dim, kRopeDim, 128, c.ratio);
  const HostStep h = MakeHostStep(l, seqs, Past::kBeforeStep, rng);
  const int64_t out = c.indexer ? l.f.index_dim : c.head_dim;
  const int64_t width = c.ratio == 4 ? 2 * out : out;
  // Compressor projections (FP32) and ape-shifted gates, as the model feeds them.
  const std::vector<float> a = rng.Normals(h.rows * width, 0.7f);
  std::vector<float> z = rng.Normals(h.rows * width);
  std::vector<float> norm = rng.Bf16Normals(out, 0.2f);
  for (float& v : norm) v = RoundToBf16(v + 1.0f);
  const Rope rope{RopeFreqs(true)};
  const int64_t carry_offset = c.indexer ? l.index_carry_offset : l.carry_offset;
  const int64_t carry_rows = c.indexer ? l.index_carry_rows : l.carry_rows;
  const int64_t page = c.indexer ? l.index_offset : l.main_offset;
  const int64_t entry_bytes = c.indexer ? l.f.index_bytes : l.f.main_bytes;
  const std::string what =
      absl::StrCat("Compress ratio=", c.ratio, c.indexer ? " indexer" : " main",
                   " dim=", c.head_dim, " ", Describe(seqs));
  ForEachOptimizedBackend(
      [&](Backend& b) {
        DeviceStep step(b, h, l);
        Buffer ab = Buffer::Of(b, a), zb = Buffer::Of(b, z);
        const CompressorParams p{c.ratio,    width,     Resident(b, norm),
                                 1e-6f,      c.indexer, carry_offset,
                                 carry_rows, page,      rope.Table(b)};
        b.Compress(step.batch(), p, l.f, ab.as<float>(), zb.as<float>(), step.pool());
        return ReadStep(step, seqs.size());
      },
      [&](const StepBytes& want, const StepBytes& got) {
        // The carry ring holds copies of the rows: bit for bit, like the rest of each state slot.
        for (size_t s = 0; s < seqs.size(); ++s) {
          ExpectSameBytes<uint8_t>(want.states[s], got.states[s], absl::StrCat(what, " state ", s));
        }
        std::vector<Range> ranges;
        std::vector<const uint8_t*> want_entries, got_entries;
        for (const auto& [s, g] : CompletedGroups(h, c.ratio)) {
          const int64_t per_block = 128 / c.ratio;
          const int64_t at =
              h.tables[s][g / per_block] * l.block_bytes + page + (g % per_block) * entry_bytes;
          ranges.push_back({at, at + entry_bytes});
          want_entries.push_back(want.pool.data() + at);
          got_entries.push_back(got.pool.data() + at);
        }
        CompareOutside(h.pool, want.pool, got.pool, ranges, what + " pool");
        CompareEntries(l, c.indexer, want_entries, got_entries, what);
      });
}

TEST(BackendCompressTest, CompressMatchesReference) {
  uint32_t seed = 100;
  for (const CompressCase& c :
       {CompressCase{4, false, 128}, CompressCase{4, true, 128}, CompressCase{128, false, 128},
        CompressCase{4, false, 256}, CompressCase{128, false, 256}}) {
    for (const std::vector<SeqSpec>& seqs : Scenarios()) RunCompress(c, seqs, seed++);
  }
}

// The test above would pass for a Compress that writes nothing if the reference wrote nothing
// either: check that the reference pools what the contract says, from the rows it says.
TEST(BackendCompressTest, ReferencePoolsTheGroupFromStepRowsAndCarry) {
  // One HCA group (ratio 128) completed by a decode token at position 255: 127 rows from the
  // carry ring, the last one from the step. With z = 0 everywhere the softmax is uniform, so the
  // pooled channel is the mean of a over the group.
  Random rng(30);
  const FakeLayout l = MakeLayout(128, kRopeDim, 128, 128);
  HostStep h = MakeHostStep(l, {{255, 1}}, Past::kBeforeStep, rng);
  std::vector<float> mean(128, 0.0f), a(128), z(128, 0.0f), norm(128, 1.0f);
  for (int64_t q = 128; q < 256; ++q) {
    std::vector<float> az(256, 0.0f);
    for (int64_t ch = 0; ch < 128; ++ch) az[ch] = RoundToBf16(rng.Normal());
    if (q < 255) {
      std::memcpy(h.states[0].data() + l.carry_offset + (q % 128) * 256 * 4, az.data(), 1024);
    } else {
      std::copy(az.begin(), az.begin() + 128, a.begin());
    }
    for (int64_t ch = 0; ch < 128; ++ch) mean[ch] += az[ch] / 128;
  }
  const Rope rope{RopeFreqs(true)};
  ReferenceBackend b;
  DeviceStep step(b, h, l);
  b.Compress(step.batch(),
             {128, 128, norm.data(), 1e-6f, false, l.carry_offset, 128, l.main_offset, rope.Host()},
             l.f, a.data(), z.data(), step.pool());
  const std::vector<uint8_t> pool = step.PoolBytes();
  std::vector<float> entry(128);
  ref::DecodeMainEntry(pool.data() + h.tables[0][1] * l.block_bytes + l.main_offset, l.f,
                       entry.data());
  // Expected: the RMSNorm of the mean, FP8 on the first 64 values; RoPE (at 128) rotates the rest,
  // keeping their norm.
  ref::RmsNormRow(mean.data(), norm.data(), 128, 1e-6f, mean.data());
  for (int64_t ch = 0; ch < 64; ++ch)
    EXPECT_NEAR(entry[ch], mean[ch], 0x1p-3 * std::fabs(mean[ch]) + 1e-3) << ch;
  float in = 0, out = 0;
  for (int64_t ch = 64; ch < 128; ++ch) {
    in += mean[ch] * mean[ch];
    out += entry[ch] * entry[ch];
  }
  EXPECT_NEAR(out, in, 0.02 * in);
  // The step's row went into the carry ring, at 255 % 128.
  EXPECT_EQ(std::memcmp(step.StateBytes(0).data() + l.carry_offset + 127 * 256 * 4, a.data(), 512),
            0);
}

struct AttentionCase {
  int64_t ratio, heads, head_dim, topk;
};

// Attention's logits are dots of head_dim terms and its output a sum over up to window + top-k
// candidates, all FP32 in any order; exp may differ in its last bits. The probabilities then
// differ by ~2^-21 relative, o's FP32 sum by ~2^-20 of the keys' magnitude — 2^-14 of the head's
// largest output leaves a wide margin even for flat attention — and bf16(o) by one ulp more when
// that crosses a midpoint. The inverse RoPE mixes pairs: a flipped input moves both outputs by up
// to 2^-7 of the pair's magnitude. Few values differ at all: ≤ 2%.
void RunAttention(const AttentionCase& c, const std::vector<SeqSpec>& seqs, uint32_t seed) {
  Random rng(seed);
  const FakeLayout l = MakeLayout(c.head_dim, kRopeDim, 128, c.ratio);
  const HostStep h = MakeHostStep(l, seqs, Past::kThroughStep, rng);
  const Rope rope{RopeFreqs(c.ratio > 0)};
  // q as QueryHeads leaves it; kv normalised, rotated, FP8-simulated as the model stores it.
  std::vector<float> q = rng.Normals(h.rows * c.heads * c.head_dim);
  std::vector<float> kv = rng.Normals(h.rows * c.head_dim);
  std::vector<uint8_t> scratch(static_cast<size_t>(h.rows * l.f.main_bytes));
  const std::vector<float> ones(static_cast<size_t>(c.head_dim), 1.0f);
  {
    ReferenceBackend ref;
    ref.QueryHeads(q.data(), h.rows, c.heads, c.head_dim, 1e-6f, rope.Host(), h.positions.data());
    ref.RmsNorm(kv.data(), ones.data(), h.rows, c.head_dim, 1e-6f, kv.data());
    ref.Rope(kv.data(), h.rows, c.head_dim, rope.Host(), h.positions.data());
    ref.EncodeMainEntries(kv.data(), h.rows, l.f, scratch.data());
  }
  const std::vector<float> sink = rng.Normals(c.heads);
  // For CSA: each row's chosen entries, a random sorted subset of the visible ones.
  const int64_t stride = std::max<int64_t>(c.topk, 1);
  std::vector<int32_t> chosen(static_cast<size_t>(h.rows * stride), -1),
      count(static_cast<size_t>(h.rows), 0);
  for (int64_t t = 0; t < h.rows && c.ratio == 4; ++t) {
    const int64_t visible = (h.positions[t] + 1) / 4;
    std::vector<int32_t> all(static_cast<size_t>(visible));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng.gen());
    const int64_t k = std::min(c.topk, visible);
    std::sort(all.begin(), all.begin() + k);
    std::copy(all.begin(), all.begin() + k, chosen.begin() + t * stride);
    count[t] = static_cast<int32_t>(k);
  }
  const std::string what =
      absl::StrCat("Attention ratio=", c.ratio, " ", c.heads, "x", c.head_dim, " ", Describe(seqs));
  ForEachOptimizedBackend(
      [&](Backend& b) {
        DeviceStep step(b, h, l);
        Buffer qb = Buffer::Of(b, q), kvb = Buffer::Of(b, kv), cb = Buffer::Of(b, chosen),
               nb = Buffer::Of(b, count);
        Buffer o(b, h.rows * c.heads * c.head_dim * 4);
        const AttentionParams p{c.heads, c.head_dim,        l.window,
                                c.ratio, l.window_offset,   l.main_offset,
                                c.topk,  Resident(b, sink), rope.Table(b)};
        b.Attention(step.batch(), p, l.f, qb.as<float>(), kvb.as<float>(),
                    c.ratio == 4 ? cb.as<int32_t>() : nullptr,
                    c.ratio == 4 ? nb.as<int32_t>() : nullptr, step.pool(), o.as<float>());
        return o.Read<float>();
      },
      [&](const std::vector<float>& want, const std::vector<float>& got) {
        const int64_t hd = c.head_dim, nope = hd - kRopeDim;
        std::vector<float> largest(static_cast<size_t>(h.rows * c.heads), 0.0f);
        for (size_t i = 0; i < want.size(); ++i)
          largest[i / hd] = std::max(largest[i / hd], std::fabs(want[i]));
        ExpectClose(want, got,
                    {[&](size_t i) {
                       const int64_t in_head = static_cast<int64_t>(i) % hd;
                       double tol = Bf16Ulp(std::max(std::fabs(want[i]), std::fabs(got[i]))) +
                                    0x1p-14 * largest[i / hd];
                       if (in_head >= nope) {
                         const size_t pair = i - ((in_head - nope) & 1);
                         tol += 0x1p-7 * std::hypot(want[pair], want[pair + 1]);
                       }
                       return tol;
                     },
                     0.02},
                    what);
      });
}

TEST(BackendAttentionTest, AttentionMatchesReference) {
  uint32_t seed = 300;
  for (const AttentionCase& c :
       {AttentionCase{0, 4, 128, 0}, AttentionCase{4, 4, 128, 16}, AttentionCase{128, 4, 128, 0},
        AttentionCase{4, 8, 256, 64}, AttentionCase{128, 8, 256, 0}}) {
    for (const std::vector<SeqSpec>& seqs : Scenarios()) RunAttention(c, seqs, seed++);
  }
}

// Copies of bytes: bit for bit, and nothing else of the state slot changes.
TEST(BackendKvTest, StoreWindowWritesTheRing) {
  uint32_t seed = 400;
  for (int64_t head_dim : {128, 256}) {
    for (const std::vector<SeqSpec>& seqs : Scenarios()) {
      Random rng(seed++);
      const FakeLayout l = MakeLayout(head_dim, kRopeDim, 128, 0);
      const HostStep h = MakeHostStep(l, seqs, Past::kBeforeStep, rng);
      const std::vector<uint8_t> entries = rng.Bytes(h.rows * l.f.main_bytes);
      const std::string what = absl::StrCat("StoreWindow dim=", head_dim, " ", Describe(seqs));
      ForEachOptimizedBackend(
          [&](Backend& b) {
            DeviceStep step(b, h, l);
            Buffer eb = Buffer::Of(b, entries);
            b.StoreWindow(step.batch(), l.f, l.window, l.window_offset, eb.as<uint8_t>());
            return ReadStep(step, seqs.size());
          },
          [&](const StepBytes& want, const StepBytes& got) {
            ExpectSameBytes<uint8_t>(want.pool, got.pool, what + " pool");
            int64_t row = 0;
            for (size_t s = 0; s < seqs.size(); ++s) {
              const SeqSpec& q = seqs[s];
              // The reference stored the sequence's newest entry at its slot (a check that this
              // test compares a real write).
              const int64_t newest = q.start + q.n - 1;
              EXPECT_EQ(std::memcmp(want.states[s].data() + l.window_offset +
                                        (newest % l.window) * l.f.main_bytes,
                                    entries.data() + (row + q.n - 1) * l.f.main_bytes,
                                    static_cast<size_t>(l.f.main_bytes)),
                        0)
                  << what << " seq " << s;
              ExpectSameBytes<uint8_t>(want.states[s], got.states[s],
                                       absl::StrCat(what, " state ", s));
              row += q.n;
            }
          });
    }
  }
}

// ---- properties of the ops, on every backend --------------------------------------------------

TEST(BackendPropertyTest, RopeRotatesPairsByPositionTimesFrequency) {
  const Rope rope{RopeFreqs(/*compressed=*/false)};
  ASSERT_EQ(rope.freqs.size(), 32u);
  // f_0 = 1 for any θ and the frequencies fall; YaRN keeps the fastest rotations and divides the
  // slowest by its factor (16).
  EXPECT_EQ(rope.freqs[0], 1.0f);
  EXPECT_LT(rope.freqs[31], rope.freqs[1]);
  ModelConfig no_yarn = *PresetConfig("tiny");
  no_yarn.has_rope_scaling = false;
  const std::vector<float> yarn = RopeFreqs(true), plain = RopeFrequencies(no_yarn, true);
  EXPECT_EQ(yarn[0], plain[0]);
  EXPECT_FLOAT_EQ(yarn[31], plain[31] / 16.0f);
  std::vector<float> x(2 * kRopeDim);
  for (int i = 0; i < 2 * kRopeDim; ++i) x[i] = RoundToBf16(static_cast<float>(i % 7) - 3.0f);
  const std::vector<int64_t> positions = {0, 1000};
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    Buffer xb = Buffer::Of(b, x), pb = Buffer::Of(b, positions);
    b.Rope(xb.as<float>(), 2, kRopeDim, rope.Table(b), pb.as<int64_t>());
    const std::vector<float> y = xb.Read<float>();
    for (int i = 0; i < kRopeDim; ++i)
      EXPECT_EQ(y[i], x[i]) << nb.label << ": position 0 is the identity";
    for (int j = 0; j < kRopeDim / 2; ++j) {
      const float* in = x.data() + kRopeDim + 2 * j;
      const float* out = y.data() + kRopeDim + 2 * j;
      const double angle = static_cast<double>(1000.0f * rope.freqs[j]);
      const double c = std::cos(angle), s = std::sin(angle);
      const double want0 = in[0] * c - in[1] * s, want1 = in[0] * s + in[1] * c;
      EXPECT_NEAR(out[0], want0, 0x1p-8 * (std::fabs(in[0]) + std::fabs(in[1])) + 1e-6)
          << nb.label << " pair " << j;
      EXPECT_NEAR(out[1], want1, 0x1p-8 * (std::fabs(in[0]) + std::fabs(in[1])) + 1e-6)
          << nb.label << " pair " << j;
      EXPECT_EQ(out[0], RoundToBf16(out[0])) << nb.label;
    }
  }
}

TEST(BackendPropertyTest, AttentionUndoesTheRotationOfItsOutput) {
  // Every window key is the same vector k = RoPE(x, p): the softmax averages copies of k, and the
  // inverse RoPE at p must give x back (up to two BF16 roundings of the rotated pairs). A sink
  // of −1e30 takes no weight.
  const int64_t heads = 2, hd = 128, p = 100;
  const Rope rope{RopeFreqs(false)};
  const FakeLayout l = MakeLayout(hd, kRopeDim, 128, 0);
  Random rng(31);
  const std::vector<float> x = rng.Bf16Normals(hd);
  std::vector<float> k = x;
  const int64_t at = p;
  ReferenceBackend().Rope(k.data(), 1, hd, rope.Host(), &at);
  const HostStep h = MakeHostStep(l, {{0, p + 1}}, Past::kBeforeStep, rng);
  std::vector<float> kv;
  for (int64_t t = 0; t <= p; ++t) kv.insert(kv.end(), k.begin(), k.end());
  const std::vector<float> q = rng.Bf16Normals(h.rows * heads * hd, 0.1f), sink(heads, -1e30f);
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    DeviceStep step(b, h, l);
    Buffer qb = Buffer::Of(b, q), kvb = Buffer::Of(b, kv), o(b, h.rows * heads * hd * 4);
    b.Attention(
        step.batch(),
        {heads, hd, 128, 0, l.window_offset, l.main_offset, 0, Resident(b, sink), rope.Table(b)},
        l.f, qb.as<float>(), kvb.as<float>(), nullptr, nullptr, step.pool(), o.as<float>());
    const std::vector<float> out = o.Read<float>();
    for (int64_t head = 0; head < heads; ++head) {
      const float* oh = out.data() + (p * heads + head) * hd;
      for (int64_t i = 0; i < hd - kRopeDim; ++i) EXPECT_EQ(oh[i], x[i]) << nb.label << " " << i;
      for (int64_t i = hd - kRopeDim; i < hd; i += 2) {
        const double tol = 0x1p-7 * (std::fabs(x[i]) + std::fabs(x[i + 1])) + 1e-6;
        EXPECT_NEAR(oh[i], x[i], tol) << nb.label << " " << i;
        EXPECT_NEAR(oh[i + 1], x[i + 1], tol) << nb.label << " " << i + 1;
      }
    }
  }
}

TEST(BackendPropertyTest, HadamardRotationIsOrthonormal) {
  // IndexerQueries at position 0 (RoPE is the identity there) of a one-hot e_a: the rotation gives
  // ±1/sqrt(128) with the Walsh function's signs (−1)^popcount(a & j); FP4 with the block scale
  // 2^-6 makes that ±6·2^-6. Rotations of different one-hots are orthogonal.
  const int64_t dim = 128;
  const int64_t hot[] = {0, 5, 127};
  std::vector<float> q(3 * dim, 0.0f);
  for (int r = 0; r < 3; ++r) q[r * dim + hot[r]] = 1.0f;
  const std::vector<int64_t> positions(3, 0);
  const Rope rope{RopeFreqs(true)};
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    Buffer qb = Buffer::Of(b, q), pb = Buffer::Of(b, positions);
    b.IndexerQueries(qb.as<float>(), 3, 1, dim, rope.Table(b), pb.as<int64_t>());
    const std::vector<float> y = qb.Read<float>();
    for (int r = 0; r < 3; ++r) {
      for (int64_t j = 0; j < dim; ++j) {
        const float sign =
            __builtin_popcountll(static_cast<uint64_t>(hot[r] & j)) % 2 ? -1.0f : 1.0f;
        ASSERT_EQ(y[r * dim + j], sign * 6.0f * 0x1p-6f)
            << nb.label << " e_" << hot[r] << " [" << j << "]";
      }
    }
    for (int r = 0; r < 3; ++r) {
      for (int s = r + 1; s < 3; ++s) {
        float dot = 0;
        for (int64_t j = 0; j < dim; ++j) dot += y[r * dim + j] * y[s * dim + j];
        EXPECT_EQ(dot, 0.0f) << nb.label;
      }
    }
  }
}

TEST(BackendPropertyTest, QueryHeadsScaleEachHeadToUnitRms) {
  // A head of 2s: mean(q²) = 4, g = 1/2, so every value becomes 1; a head of 8s: 1 as well
  // (position 0: RoPE is the identity).
  std::vector<float> q(2 * 128, 2.0f);
  std::fill(q.begin() + 128, q.end(), 8.0f);
  const int64_t position = 0;
  const Rope rope{RopeFreqs(false)};
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    Buffer qb = Buffer::Of(b, q), pb = Buffer::Of(b, std::vector<int64_t>{position});
    b.QueryHeads(qb.as<float>(), 1, 2, 128, 1e-6f, rope.Table(b), pb.as<int64_t>());
    for (float v : qb.Read<float>()) ASSERT_EQ(v, 1.0f) << nb.label;
  }
}

TEST(BackendPropertyTest, IndexerTopKBreaksTiesTowardTheLowerEntry) {
  // Every visible entry holds the same key: all scores tie, so the chosen entries are the first
  // min(topk, visible) ones. Rows at positions 2 (nothing visible), 7 (2 entries), 200 (50).
  const FakeLayout l = MakeLayout(128, kRopeDim, 128, 4);
  Random rng(32);
  HostStep h = MakeHostStep(l, {{2, 1}, {7, 1}, {200, 1}}, Past::kThroughStep, rng);
  std::vector<float> key = rng.Bf16Normals(128);
  std::vector<uint8_t> bytes(static_cast<size_t>(l.f.index_bytes));
  ref::EncodeIndexerEntry(key.data(), 128, l.f.index_bytes, bytes.data());
  for (size_t s = 0; s < 3; ++s) {
    for (int64_t j = 0; j < (h.seqs[s].start + 1) / 4; ++j) {
      std::memcpy(h.Entry(l, s, l.index_offset, 4, l.f.index_bytes, j), bytes.data(), bytes.size());
    }
  }
  std::vector<float> q(3 * 128);
  for (int r = 0; r < 3; ++r) std::copy(key.begin(), key.end(), q.begin() + r * 128);  // q·k > 0
  const std::vector<float> w(3, 1.0f);
  const int64_t topk = 16;
  for (NamedBackend& nb : AllBackends()) {
    Backend& b = *nb.backend;
    DeviceStep step(b, h, l);
    Buffer qb = Buffer::Of(b, q), wb = Buffer::Of(b, w), chosen(b, 3 * topk * 4), count(b, 3 * 4);
    b.IndexerTopK(step.batch(), {1, 128, topk, l.index_offset}, l.f, qb.as<float>(), wb.as<float>(),
                  step.pool(), chosen.as<int32_t>(), count.as<int32_t>());
    const std::vector<int32_t> c = chosen.Read<int32_t>();
    EXPECT_EQ(count.Read<int32_t>(), (std::vector<int32_t>{0, 2, 16})) << nb.label;
    EXPECT_EQ(std::vector<int32_t>(c.begin() + topk, c.begin() + topk + 2),
              (std::vector<int32_t>{0, 1}))
        << nb.label;
    std::vector<int32_t> first(16);
    std::iota(first.begin(), first.end(), 0);
    EXPECT_EQ(std::vector<int32_t>(c.begin() + 2 * topk, c.end()), first) << nb.label;
  }
}

}  // namespace
}  // namespace strata::engine::backend_test
