// The CPU backend's vector loops against the plain definitions they replace on the hot path, bit
// for bit: main-entry decoding against the codec for every E4M3 code (zeros of both signs,
// subnormals, the largest normals, both NaNs) under the smallest, a middle and the largest UE8M0
// scale; simulated FP4 against the codec at every rounding midpoint; the batched dot products and
// weighted sums against Dot and Axpy; the BF16 roundings; and every indexer kernel table this CPU
// runs against the portable one (which is the integer definition written out).
#include "engine/cpu/vector_ops.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/cpu/indexer_kernels.h"
#include "engine/kv/kv_codec.h"
#include "engine/numerics.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

TEST(VectorOpsTest, DecodeMainEntryEqualsTheCodecForEveryCode) {
  const MainEntryCodec codec{256, 64, 256 + 4 + 128};
  std::vector<uint8_t> entry(static_cast<size_t>(codec.bytes), 0);
  for (int i = 0; i < 256; ++i) entry[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
  for (uint8_t scale :
       {uint8_t{0}, uint8_t{1}, uint8_t{120}, uint8_t{127}, uint8_t{200}, uint8_t{254}}) {
    for (int b = 0; b < 4; ++b) entry[static_cast<size_t>(256 + b)] = scale;
    for (int i = 0; i < 64; ++i) {  // RoPE part: BF16 bit patterns of every sign and size
      const uint16_t bits = static_cast<uint16_t>(i * 1031 + (i & 1 ? 0x8000 : 0));
      std::memcpy(entry.data() + 260 + 2 * i, &bits, 2);
    }
    std::vector<float> want(320), got(320);
    codec.Decode(entry.data(), want.data());
    cpu::DecodeMainEntry(entry.data(), codec.nope, codec.rope, got.data());
    for (int i = 0; i < 320; ++i) {
      if (std::isnan(want[static_cast<size_t>(i)])) {
        EXPECT_TRUE(std::isnan(got[static_cast<size_t>(i)]))
            << "value " << i << " scale " << int{scale};
        continue;
      }
      uint32_t a, b;
      std::memcpy(&a, &want[static_cast<size_t>(i)], 4);
      std::memcpy(&b, &got[static_cast<size_t>(i)], 4);
      EXPECT_EQ(a, b) << "value " << i << " scale " << int{scale} << ": "
                      << want[static_cast<size_t>(i)] << " vs " << got[static_cast<size_t>(i)];
    }
  }
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

std::vector<float> Normals(std::mt19937& rng, size_t n, float sigma = 1.0f) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(VectorOpsTest, SimulateFp4EqualsTheCodecAtEveryMidpoint) {
  // Each block holds its amax (6·2^k, so the scale is 2^k) and values at, just below and just
  // above every rounding midpoint of the grid, of both signs; zeros, saturation; then random
  // blocks and one with a NaN. (7·2^k in a block of scale 2^k: the codec saturates it too.)
  const float mids[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  std::vector<float> v;
  for (int k : {-130, -20, 0, 3, 60}) {
    const float scale = std::ldexp(1.0f, k);
    std::vector<float> values = {0.0f, -0.0f, 5.9999f * scale, 7.0f * scale};
    for (float m : mids) {
      for (float x : {m, std::nextafter(m, 0.0f), std::nextafter(m, 7.0f)}) {
        values.push_back(x * scale);
        values.push_back(-x * scale);
      }
    }
    for (size_t at = 0; at < values.size(); at += 31) {
      std::vector<float> block = {6.0f * scale};
      for (size_t i = at; i < std::min(values.size(), at + 31); ++i) block.push_back(values[i]);
      while (block.size() < 32) block.push_back(-0.1f * scale);
      v.insert(v.end(), block.begin(), block.end());
    }
  }
  std::mt19937 rng(3);
  const std::vector<float> random = Normals(rng, 32 * 64);
  v.insert(v.end(), random.begin(), random.end());
  std::vector<float> nan_block(32, 1.0f);
  nan_block[5] = std::numeric_limits<float>::quiet_NaN();
  v.insert(v.end(), nan_block.begin(), nan_block.end());
  std::vector<float> want = v, got = v;
  SimulateFp4(want.data(), static_cast<int64_t>(want.size()));
  cpu::SimulateFp4(got.data(), static_cast<int64_t>(got.size()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << i;
      continue;
    }
    EXPECT_EQ(Bits(want[i]), Bits(got[i])) << "value " << i << " = " << v[i] << ": " << want[i]
                                           << " vs " << got[i];
  }
}

TEST(VectorOpsTest, DotManyAndAxpyManyEqualDotAndAxpy) {
  std::mt19937 rng(5);
  for (int64_t n : {128, 96, 37}) {  // whole vectors, and lengths the blocked loops cannot take
    for (int64_t nq : {1, 3, 4, 8}) {
      const int64_t count = 23;
      const std::vector<float> q = Normals(rng, static_cast<size_t>(nq * n));
      const std::vector<float> rows = Normals(rng, static_cast<size_t>(count * n));
      std::vector<const float*> ptrs;
      for (int64_t j = 0; j < count; ++j) ptrs.push_back(rows.data() + (count - 1 - j) * n);
      std::vector<float> got(static_cast<size_t>(nq * count));
      cpu::DotMany(q.data(), n, nq, ptrs.data(), count, n, got.data(), count);
      for (int64_t h = 0; h < nq; ++h) {
        for (int64_t j = 0; j < count; ++j) {
          EXPECT_EQ(Bits(cpu::Dot(q.data() + h * n, ptrs[static_cast<size_t>(j)], n)),
                    Bits(got[static_cast<size_t>(h * count + j)]))
              << "n " << n << " nq " << nq << " h " << h << " j " << j;
        }
      }
      const std::vector<float> p = Normals(rng, static_cast<size_t>(nq * count));
      std::vector<float> want(static_cast<size_t>(nq * n), 0.0f), sum = want;
      for (int64_t h = 0; h < nq; ++h) {
        for (int64_t j = 0; j < count; ++j)
          cpu::Axpy(p[static_cast<size_t>(h * count + j)], ptrs[static_cast<size_t>(j)],
                    want.data() + h * n, n);
      }
      cpu::AxpyMany(p.data(), count, nq, ptrs.data(), count, n, sum.data(), n);
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(Bits(want[i]), Bits(sum[i])) << "n " << n << " nq " << nq << " i " << i;
      }
    }
  }
}

TEST(VectorOpsTest, Bf16RoundingsEqualRoundToBf16) {
  std::mt19937 rng(9);
  std::vector<float> x = Normals(rng, 301, 100.0f);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[4] = -std::numeric_limits<float>::infinity();
  x[5] = std::numeric_limits<float>::max();
  x[6] = 0x1.00ff8p0f;  // halfway cases
  x[7] = 0x1.017f8p0f;
  x[8] = std::numeric_limits<float>::denorm_min();
  const std::vector<float> w = Normals(rng, x.size());
  std::vector<float> rounded = x, scaled(x.size());
  cpu::RoundBf16(rounded.data(), static_cast<int64_t>(x.size()));
  cpu::ScaleRoundBf16(x.data(), 0.37f, w.data(), static_cast<int64_t>(x.size()), scaled.data());
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(rounded[i]));
      continue;
    }
    EXPECT_EQ(Bits(RoundToBf16(x[i])), Bits(rounded[i])) << i;
    EXPECT_EQ(Bits(RoundToBf16(x[i] * 0.37f * w[i])), Bits(scaled[i])) << i;
  }
  // MixRowsBf16: bf16(c0·r0 + c1·r1 + …) with Axpy's operations, left to right.
  const int64_t n = 301, count = 5;
  const std::vector<float> rows = Normals(rng, static_cast<size_t>(count * n));
  const std::vector<float> coef = Normals(rng, count);
  std::vector<const float*> ptrs;
  for (int64_t i = 0; i < count; ++i) ptrs.push_back(rows.data() + i * n);
  std::vector<float> mixed(static_cast<size_t>(n)), want(static_cast<size_t>(n), 0.0f);
  cpu::MixRowsBf16(coef.data(), ptrs.data(), count, n, mixed.data());
  for (int64_t k = 0; k < n; ++k) {
    float sum = coef[0] * rows[static_cast<size_t>(k)];
    for (int64_t i = 1; i < count; ++i) {
      // The same fused or separate multiply-add as the kernels (Axpy's, on this CPU).
      float acc = sum;
      cpu::Axpy(coef[static_cast<size_t>(i)], rows.data() + i * n + k, &acc, 1);
      sum = acc;
    }
    EXPECT_EQ(Bits(RoundToBf16(sum)), Bits(mixed[static_cast<size_t>(k)])) << k;
  }
}

// ---- indexer kernels -----------------------------------------------------------------------------

std::vector<const cpu::IndexerKernelTable*> IndexerTables() {
  std::vector<const cpu::IndexerKernelTable*> tables;
#if defined(__x86_64__)
  if (cpu::Avx2IndexerKernels() != nullptr && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma")) {
    tables.push_back(cpu::Avx2IndexerKernels());
  }
  if (cpu::Avx512VnniIndexerKernels() != nullptr && __builtin_cpu_supports("avx512vnni")) {
    tables.push_back(cpu::Avx512VnniIndexerKernels());
  }
#endif
  return tables;
}

TEST(IndexerKernelsTest, EveryTableEqualsThePortableOne) {
  constexpr int64_t kDim = 128, kBytes = kDim / 2 + kDim / 32;
  const IndexerEntryCodec codec{kDim, kBytes};
  std::mt19937 rng(11);
  // 141 keys (a partial last group): FP4 entries of random normals, some with block scales the
  // integer form cannot hold (32× apart, out of range, NaN) or all-zero blocks.
  const int64_t count = 141, groups = (count + 15) / 16;
  std::vector<uint8_t> entries(static_cast<size_t>(count * kBytes));
  std::vector<const uint8_t*> ptrs;
  for (int64_t j = 0; j < count; ++j) {
    std::vector<float> v = Normals(rng, kDim);
    if (j % 11 == 3) std::fill(v.begin() + 32, v.begin() + 64, 0.0f);
    uint8_t* e = entries.data() + j * kBytes;
    codec.Encode(v.data(), e);
    if (j % 13 == 5) e[kDim / 2 + 1] = static_cast<uint8_t>(e[kDim / 2] + 5);
    if (j % 17 == 6) e[kDim / 2 + 2] = 0xFF;
    if (j % 19 == 7) e[kDim / 2 + 3] = 200;
    if (j % 23 == 8) e[kDim / 2] = static_cast<uint8_t>(e[kDim / 2 + 1] + 3);  // 8×: still exact
    ptrs.push_back(e);
  }
  const cpu::IndexerKernelTable& generic = cpu::GenericIndexerKernels();
  std::vector<uint8_t> want_keys(static_cast<size_t>(groups * 16 * kDim));
  std::vector<float> want_scale(static_cast<size_t>(groups * 16));
  std::vector<uint16_t> want_slow(static_cast<size_t>(groups));
  generic.decode(ptrs.data(), count, kDim, want_keys.data(), want_scale.data(), want_slow.data());
  int slow = 0;
  for (uint16_t m : want_slow) slow += __builtin_popcount(m);
  EXPECT_GT(slow, 20);  // the cases above are slow keys
  // Rows: codes in [−127, 127], 8 heads, weights of both signs.
  std::vector<int8_t> codes(8 * kDim);
  std::uniform_int_distribution<int> code(-127, 127);
  for (int8_t& c : codes) c = static_cast<int8_t>(code(rng));
  std::vector<const int8_t*> q;
  std::vector<int32_t> qsum;
  for (int h = 0; h < 8; ++h) {
    q.push_back(codes.data() + h * kDim);
    int32_t sum = 0;
    for (int64_t i = 0; i < kDim; ++i) sum += codes[static_cast<size_t>(h * kDim + i)];
    qsum.push_back(sum);
  }
  const std::vector<float> wq = Normals(rng, 8, 1e-3f);
  for (const cpu::IndexerKernelTable* t : IndexerTables()) {
    SCOPED_TRACE(t->name);
    std::vector<uint8_t> keys(want_keys.size());
    std::vector<float> scale(want_scale.size());
    std::vector<uint16_t> slow_masks(want_slow.size());
    t->decode(ptrs.data(), count, kDim, keys.data(), scale.data(), slow_masks.data());
    EXPECT_EQ(keys, want_keys);
    EXPECT_EQ(slow_masks, want_slow);
    for (size_t i = 0; i < scale.size(); ++i) EXPECT_EQ(Bits(want_scale[i]), Bits(scale[i])) << i;
    for (int heads = 1; heads <= 8; ++heads) {
      const cpu::IndexerHeads h{q.data(), qsum.data(), wq.data(), heads};
      for (bool first : {true, false}) {
        std::vector<float> want(static_cast<size_t>(groups * 16), 0.25f), got = want;
        generic.heads(want_keys.data(), want_scale.data(), groups, kDim, h, first, want.data());
        t->heads(keys.data(), scale.data(), groups, kDim, h, first, got.data());
        for (size_t i = 0; i < want.size(); ++i)
          EXPECT_EQ(Bits(want[i]), Bits(got[i])) << "heads " << heads << " key " << i;
        std::vector<uint16_t> want_masks(static_cast<size_t>(groups)), masks = want_masks;
        generic.pass_masks(want.data(), groups, want[7], want_masks.data());
        t->pass_masks(want.data(), groups, want[7], masks.data());
        EXPECT_EQ(want_masks, masks);
        std::vector<float> want_max(static_cast<size_t>(groups)), max = want_max;
        generic.group_max(want.data(), groups, want_max.data());
        t->group_max(want.data(), groups, max.data());
        EXPECT_EQ(want_max, max);
      }
    }
  }
}

TEST(IndexerKernelsTest, PortableHeadsAreTheExactIntegerDot) {
  // One key and one head, by hand: codes kc = 2v·2^d from the entry, the dot Σ qc·kc exactly,
  // then fma(wq, max(dot, 0)·2^ek, start).
  constexpr int64_t kDim = 128, kBytes = kDim / 2 + kDim / 32;
  std::mt19937 rng(13);
  std::vector<float> v = Normals(rng, kDim);
  std::vector<uint8_t> e(static_cast<size_t>(kBytes));
  IndexerEntryCodec{kDim, kBytes}.Encode(v.data(), e.data());  // v: the decoded values now
  const uint8_t* ptr = e.data();
  std::vector<uint8_t> keys(16 * kDim);
  std::vector<float> kscale(16);
  uint16_t slow = 0;
  cpu::GenericIndexerKernels().decode(&ptr, 1, kDim, keys.data(), kscale.data(), &slow);
  ASSERT_EQ(slow, 0);
  std::vector<int8_t> codes(kDim);
  double dot = 0;
  int32_t qsum = 0;
  for (int64_t i = 0; i < kDim; ++i) {
    codes[static_cast<size_t>(i)] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    qsum += codes[static_cast<size_t>(i)];
    dot += codes[static_cast<size_t>(i)] * static_cast<double>(v[static_cast<size_t>(i)]);
  }
  const int8_t* q = codes.data();
  const float wq = -0.75f;
  const cpu::IndexerHeads h{&q, &qsum, &wq, 1};
  std::vector<float> out(16, 2.0f);
  cpu::GenericIndexerKernels().heads(keys.data(), kscale.data(), 1, kDim, h, false, out.data());
  // dot is exact in double (products of ≤ 8-bit and 3-bit significands, 128 of them).
  EXPECT_EQ(Bits(std::fma(wq, static_cast<float>(std::max(dot, 0.0)), 2.0f)), Bits(out[0]));
  for (int l = 1; l < 16; ++l) EXPECT_EQ(out[static_cast<size_t>(l)], 2.0f) << l;  // zero keys
}

}  // namespace
}  // namespace strata::engine
