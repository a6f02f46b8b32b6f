// Helpers of the op-by-op parity tests (backend_ops_test.cc, backend_moe_ops_test.cc,
// backend_attention_ops_test.cc): the backends under test, backend memory, seeded random inputs
// and weights, a fake KV pool with state slots and a step over several sequences, and the
// element-wise comparisons whose tolerances the tests justify.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model_config.h"
#include "engine/model_ops.h"
#if STRATA_WITH_CUDA
#include "engine/cuda/cuda_backend.h"
#endif
#include "engine/numerics.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/reference_backend.h"

namespace strata::engine::backend_test {

// ---- the backends ------------------------------------------------------------------------------

struct NamedBackend {
  std::string label;
  std::unique_ptr<Backend> backend;
};

// One CpuBackend per instruction set this build and CPU run, two threads each (so the ops' own
// work splitting is exercised), and, in a CUDA build on a machine with a GPU, the CUDA backend
// (tests/unit/engine/cuda_model_test.cc says "skipped" where there is none).
inline std::vector<NamedBackend> OptimizedBackends() {
  std::vector<NamedBackend> out;
  for (CpuIsa isa : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16}) {
    if (!CpuIsaSupported(isa)) continue;
    auto backend = CpuBackend::Create({.threads = 2, .isa = isa});
    EXPECT_TRUE(backend.ok()) << CpuIsaName(isa) << ": " << backend.status();
    if (!backend.ok()) continue;
    out.push_back({absl::StrCat("cpu/", CpuIsaName(isa)), std::move(*backend)});
  }
  EXPECT_FALSE(out.empty());
#if STRATA_WITH_CUDA
  if (CudaDeviceCount() > 0) {
    auto cuda = MakeCudaBackend({.device = 0});
    EXPECT_TRUE(cuda.ok()) << cuda.status();
    if (cuda.ok()) out.push_back({"cuda", std::move(*cuda)});
  }
#endif
  return out;
}

// The reference and every optimized backend, for properties every backend must have.
inline std::vector<NamedBackend> AllBackends() {
  std::vector<NamedBackend> backends = OptimizedBackends();
  backends.insert(backends.begin(), {"reference", std::make_unique<testing::ReferenceBackend>()});
  return backends;
}

// Row counts of the dense ops' tests: decode-sized, odd, and a prefill chunk past 128.
inline constexpr int64_t kRows[] = {1, 3, 17, 130};

// Runs `run(backend)` on the reference and on every optimized backend and hands each result to
// `compare(want, got)` with the backend's name in scope.
template <typename Run, typename Compare>
void ForEachOptimizedBackend(Run run, Compare compare) {
  testing::ReferenceBackend reference;
  const auto want = run(static_cast<Backend&>(reference));
  for (NamedBackend& b : OptimizedBackends()) {
    SCOPED_TRACE(b.label);
    const auto got = run(*b.backend);
    compare(want, got);
  }
}

// ---- backend memory ----------------------------------------------------------------------------

// `bytes` of backend memory, freed with its backend.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend& backend, int64_t bytes) : backend_(&backend), bytes_(bytes) {
    absl::StatusOr<void*> ptr = backend.Allocate(std::max<int64_t>(bytes, 1));
    if (!ptr.ok()) {
      ADD_FAILURE() << "Allocate(" << bytes << "): " << ptr.status();
      std::abort();
    }
    ptr_ = *ptr;
  }
  template <typename T>
  static Buffer Of(Backend& backend, const std::vector<T>& host) {
    Buffer b(backend, static_cast<int64_t>(host.size() * sizeof(T)));
    if (!host.empty()) backend.ToDevice(b.ptr_, host.data(), b.bytes_);
    return b;
  }
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (ptr_ != nullptr) backend_->Free(ptr_);
  }

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  // The whole buffer, read back to the host.
  template <typename T>
  std::vector<T> Read() const {
    std::vector<T> host(static_cast<size_t>(bytes_) / sizeof(T));
    if (!host.empty()) backend_->ToHost(host.data(), ptr_, bytes_);
    return host;
  }

 private:
  Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// Read-only parameters (weights, tables) as backend memory living as long as the backend. The
// host vector must outlive the backend too (MakeResident may keep the host pointer).
template <typename T>
const T* Resident(Backend& backend, const std::vector<T>& host) {
  absl::StatusOr<const void*> ptr =
      backend.MakeResident(host.data(), static_cast<int64_t>(host.size() * sizeof(T)));
  if (!ptr.ok()) {
    ADD_FAILURE() << "MakeResident: " << ptr.status();
    std::abort();
  }
  return static_cast<const T*>(*ptr);
}

// ---- random inputs -----------------------------------------------------------------------------

class Random {
 public:
  explicit Random(uint32_t seed) : gen_(seed) {}
  float Normal(float sigma = 1.0f) { return sigma * normal_(gen_); }
  float Uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen_); }
  int64_t Int(int64_t lo, int64_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen_);
  }
  std::vector<float> Normals(int64_t n, float sigma = 1.0f) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = Normal(sigma);
    return v;
  }
  // BF16 values, as every activation between the model's ops is.
  std::vector<float> Bf16Normals(int64_t n, float sigma = 1.0f) {
    std::vector<float> v = Normals(n, sigma);
    for (float& x : v) x = RoundToBf16(x);
    return v;
  }
  std::vector<uint8_t> Bytes(int64_t n) {
    std::vector<uint8_t> v(static_cast<size_t>(n));
    for (uint8_t& b : v) b = static_cast<uint8_t>(gen_());
    return v;
  }
  std::mt19937& gen() { return gen_; }

 private:
  std::mt19937 gen_;
  std::normal_distribution<float> normal_;
};

// The tiny preset's RoPE frequencies (r = 64), as the model builds them: window-only layers'
// (θ = 10000) or compressed layers' (θ = 160000 with YaRN).
inline std::vector<float> RopeFreqs(bool compressed) {
  return RopeFrequencies(*PresetConfig("tiny"), compressed);
}

inline constexpr double kFp32Eps = 0x1p-24;  // FP32 unit roundoff

inline constexpr int64_t kRopeDim = 64;  // the tiny preset's rope dims

// RoPE frequencies as a table on a backend or on the host.
struct Rope {
  std::vector<float> freqs;
  RopeTable Table(Backend& b) const {
    return RopeTable{Resident(b, freqs), static_cast<int64_t>(freqs.size()) * 2};
  }
  RopeTable Host() const { return RopeTable{freqs.data(), static_cast<int64_t>(freqs.size()) * 2}; }
};

// ---- weights -----------------------------------------------------------------------------------

// A weight matrix in a checkpoint format, generated like `strata mkmodel` (w ~ N(0, 1/cols)),
// with the same matrix's absolute values for error bounds.
struct TestWeight {
  WeightView view, abs_view;
  std::vector<uint8_t> bytes, abs_bytes, scale;
  std::vector<uint16_t> bf16, abs_bf16;
  std::vector<float> f32, abs_f32;
};

inline TestWeight MakeWeight(WeightFormat format, int64_t rows, int64_t cols, Random& rng) {
  TestWeight w;
  w.view = WeightView{format, nullptr, nullptr, rows, cols};
  const float sigma = 1.0f / std::sqrt(static_cast<float>(cols));
  const std::vector<float> values = rng.Normals(rows * cols, sigma);
  switch (format) {
    case WeightFormat::kF32:
      w.f32 = values;
      w.abs_f32 = values;
      for (float& v : w.abs_f32) v = std::fabs(v);
      w.view.data = w.f32.data();
      w.abs_view = w.view;
      w.abs_view.data = w.abs_f32.data();
      return w;
    case WeightFormat::kBf16:
      for (float v : values) w.bf16.push_back(FloatToBf16(v));
      w.abs_bf16 = w.bf16;
      for (uint16_t& v : w.abs_bf16) v &= 0x7FFF;
      w.view.data = w.bf16.data();
      w.abs_view = w.view;
      w.abs_view.data = w.abs_bf16.data();
      return w;
    case WeightFormat::kFp8Block: {
      const int64_t scols = (cols + 127) / 128;
      w.scale.assign(static_cast<size_t>(((rows + 127) / 128) * scols), 0);
      for (size_t b = 0; b < w.scale.size(); ++b) {  // the blocks' amax is ≈ 4σ
        w.scale[b] = Ue8m0FromExponent(PowerOfTwoScaleExponent(4 * sigma, kE4M3Max, 1e-4f));
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const float s = Ue8m0ToFloat(w.scale[(r / 128) * scols + c / 128]);
          w.bytes.push_back(FloatToE4M3(values[r * cols + c] / s));
        }
      }
      w.abs_bytes = w.bytes;
      for (uint8_t& v : w.abs_bytes) v &= 0x7F;
      break;
    }
    case WeightFormat::kFp4Block:
      w.scale.assign(static_cast<size_t>(rows * (cols / 32)), 0);
      w.bytes.assign(static_cast<size_t>(rows * cols / 2), 0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t b = 0; b < cols / 32; ++b) {
          float amax = 0;
          for (int64_t c = b * 32; c < b * 32 + 32; ++c)
            amax = std::max(amax, std::fabs(values[r * cols + c]));
          const int e = PowerOfTwoScaleExponent(amax, kE2M1Max, 6 * std::ldexp(1.0f, -126));
          w.scale[r * (cols / 32) + b] = Ue8m0FromExponent(e);
          for (int64_t c = b * 32; c < b * 32 + 32; ++c) {
            const uint8_t code = FloatToE2M1(values[r * cols + c] * std::ldexp(1.0f, -e));
            w.bytes[(r * cols + c) / 2] |= static_cast<uint8_t>(c % 2 == 0 ? code : code << 4);
          }
        }
      }
      w.abs_bytes = w.bytes;
      for (uint8_t& v : w.abs_bytes) v &= 0x77;
      break;
  }
  w.view.data = w.bytes.data();
  w.view.scale = w.scale.data();
  w.abs_view = w.view;
  w.abs_view.data = w.abs_bytes.data();
  return w;
}

// The view with its data and scales as backend memory.
inline WeightView ResidentView(Backend& b, const TestWeight& w) {
  WeightView v = w.view;
  switch (w.view.format) {
    case WeightFormat::kF32:
      v.data = Resident(b, w.f32);
      break;
    case WeightFormat::kBf16:
      v.data = Resident(b, w.bf16);
      break;
    default:
      v.data = Resident(b, w.bytes);
      v.scale = Resident(b, w.scale);
  }
  return v;
}

inline std::vector<float> Abs(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

// The FP32 error bound of a dot product of `terms` products summed in any order, given the sum of
// the products' magnitudes: 2·(terms + 4)·u·Σ|x·w| (γ_n with slack for the scale multiplies, as
// cpu_linear_test.cc), plus subnormal slack.
inline double DotBound(int64_t terms, double abs_sum) {
  const double k = static_cast<double>(terms) + 4;
  return 2.0 * k * kFp32Eps * abs_sum + k * 0x1p-126;
}

// ---- comparisons -------------------------------------------------------------------------------

inline bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// The distance of two BF16 values in units in the last place (their codes as ordered integers).
inline int64_t Bf16Ulps(float a, float b) {
  auto ordered = [](float v) {
    const int32_t bits = static_cast<int32_t>(FloatToBf16(v));
    return bits & 0x8000 ? -(bits & 0x7FFF) : bits;
  };
  return std::abs(static_cast<int64_t>(ordered(a)) - ordered(b));
}

// One BF16 unit in the last place at |v| (2^(e−7) for |v| in [2^e, 2^(e+1))).
inline double Bf16Ulp(float v) {
  const float a = std::fabs(v);
  if (a < std::ldexp(1.0f, -126)) return std::ldexp(1.0, -133);
  int e;
  std::frexp(a, &e);
  return std::ldexp(1.0, e - 1 - 7);
}

inline void ExpectBitIdentical(absl::Span<const float> want, absl::Span<const float> got,
                               const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < want.size() && reported < 5; ++i) {
    if (SameBits(want[i], got[i])) continue;
    ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", reference " << want[i];
    ++reported;
  }
}

// Equal as numbers: +0 and −0 are the same value (an FP4/FP8 code's sign on zero changes no
// product or sum the model computes from it).
inline void ExpectSameValues(absl::Span<const float> want, absl::Span<const float> got,
                             const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < want.size() && reported < 5; ++i) {
    if (want[i] == got[i]) continue;
    ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", reference " << want[i];
    ++reported;
  }
}

template <typename T>
void ExpectSameBytes(absl::Span<const T> want, absl::Span<const T> got, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < want.size() && reported < 5; ++i) {
    if (want[i] == got[i]) continue;
    ADD_FAILURE() << what << "[" << i << "] = " << +got[i] << ", reference " << +want[i];
    ++reported;
  }
}

// The tolerance of one element-wise comparison: every |got − want| ≤ bound(i), and at most a
// fraction `max_differing` of the elements (at least one element allowed when it is positive)
// differ at all — a systematic difference (a wrong order of roundings, a missed term) moves far
// more values than reordered FP32 sums do.
struct Tolerance {
  std::function<double(size_t)> bound;
  double max_differing = 0;
};

inline void ExpectClose(absl::Span<const float> want, absl::Span<const float> got,
                        const Tolerance& tol, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int64_t differing = 0, reported = 0;
  double worst = 0;
  size_t worst_at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (SameBits(want[i], got[i]) || want[i] == got[i]) continue;
    ++differing;
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double bound = tol.bound(i);
    if (diff / bound > worst || std::isnan(diff)) {
      worst = std::isnan(diff) ? INFINITY : diff / bound;
      worst_at = i;
    }
    if (!(diff <= bound) && reported < 5) {
      ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", reference " << want[i]
                    << ": |difference| " << diff << " > tolerance " << bound;
      ++reported;
    }
  }
  const int64_t allowed =
      tol.max_differing > 0
          ? std::max<int64_t>(
                1, static_cast<int64_t>(tol.max_differing * static_cast<double>(want.size())))
          : 0;
  EXPECT_LE(differing, allowed) << what << ": " << differing << " of " << want.size()
                                << " values differ from the reference (worst at [" << worst_at
                                << "]: " << got[worst_at] << " vs " << want[worst_at] << ")";
}

// "≤ n BF16 ulps of the larger magnitude, plus `abs`" as a Tolerance bound.
inline std::function<double(size_t)> Bf16UlpsBound(absl::Span<const float> want,
                                                   absl::Span<const float> got, double ulps,
                                                   std::function<double(size_t)> abs = nullptr) {
  return [=](size_t i) {
    const float larger = std::max(std::fabs(want[i]), std::fabs(got[i]));
    return ulps * Bf16Ulp(larger) + (abs ? abs(i) : 0.0);
  };
}

// ---- a step over several sequences, with a fake KV pool ----------------------------------------

struct SeqSpec {
  int64_t start = 0;  // position of the first new token
  int64_t n = 0;      // new tokens
};

// Steps whose sequences sit where the ops' edge cases are: the first CSA group (positions 0–3,
// no previous group), HCA groups (128), the window's edge (128), block edges (128), positions
// whose window lies partly or wholly in the ring, a ring that wraps, single decode tokens next to
// prefill chunks, and chunks whose carry rows are overwritten by the step itself.
inline const std::vector<std::vector<SeqSpec>>& Scenarios() {
  static const auto* kScenarios = new std::vector<std::vector<SeqSpec>>{
      {{383, 1}},                     // 1 row: completes CSA 95, HCA 2
      {{3, 1}, {255, 1}, {1023, 1}},  // 3 decode rows
      {{1000, 17}},                   // 17 rows, long history
      {{0, 130}},                     // 130 rows from scratch
      {{125, 7}, {383, 1}, {100, 130}, {0, 5}, {518, 17}, {6, 6}},  // mixed prefill and decode
  };
  return *kScenarios;
}

inline std::string Describe(const std::vector<SeqSpec>& seqs) {
  std::string s = "step {";
  for (const SeqSpec& q : seqs) absl::StrAppend(&s, " [", q.start, ", +", q.n, ")");
  return s + " }";
}

inline int64_t RoundUp(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// One layer's byte layout in the fake pool's blocks and the state slots, shaped like
// engine/kv/kv_layout.h: a 64-byte header first (so no offset is 0) and 64 guard bytes at the end
// of each record (a write past its part shows up as a changed byte).
struct FakeLayout {
  KvEntryFormat f;
  int64_t head_dim = 0, ratio = 0, window = 128;
  int64_t main_offset = 0, index_offset = 0, block_bytes = 0;
  int64_t window_offset = 0, carry_offset = 0, carry_rows = 0, carry_width = 0;
  int64_t index_carry_offset = 0, index_carry_rows = 8, state_bytes = 0;
};

inline FakeLayout MakeLayout(int64_t head_dim, int64_t rope, int64_t index_dim, int64_t ratio) {
  FakeLayout l;
  l.head_dim = head_dim;
  l.ratio = ratio;
  l.f.nope = head_dim - rope;
  l.f.rope = rope;
  l.f.main_bytes = RoundUp(l.f.nope + l.f.nope / 64 + 2 * rope, 8);
  l.f.index_dim = index_dim;
  l.f.index_bytes = RoundUp(index_dim / 2 + index_dim / 32, 4);
  int64_t block = 64;
  l.main_offset = block;
  if (ratio > 0) block += (128 / ratio) * l.f.main_bytes;
  l.index_offset = block;
  if (ratio == 4) block += 32 * l.f.index_bytes;
  l.block_bytes = block + 64;
  int64_t state = 64;
  l.window_offset = state;
  state += l.window * l.f.main_bytes;
  if (ratio > 0) {
    l.carry_rows = ratio == 4 ? 8 : 128;
    l.carry_width = ratio == 4 ? 2 * head_dim : head_dim;
    l.carry_offset = state;
    state += l.carry_rows * 2 * l.carry_width * 4;
  }
  if (ratio == 4) {
    l.index_carry_offset = state;
    state += l.index_carry_rows * 2 * (2 * index_dim) * 4;
  }
  l.state_bytes = state + 64;
  return l;
}

// Host contents of a step: rows, block tables, the pool's blocks and each sequence's state slot.
struct HostStep {
  std::vector<SeqSpec> seqs;
  int64_t rows = 0;
  std::vector<int64_t> positions;
  std::vector<int32_t> seq_of_row;
  std::vector<std::vector<int32_t>> tables;
  int64_t num_blocks = 0;
  std::vector<uint8_t> pool;
  std::vector<std::vector<uint8_t>> states;

  uint8_t* Entry(const FakeLayout& l, size_t s, int64_t offset, int64_t ratio, int64_t bytes,
                 int64_t j) {
    const int64_t per_block = 128 / ratio;
    return pool.data() + tables[s][j / per_block] * l.block_bytes + offset +
           (j % per_block) * bytes;
  }
};

// What of a sequence's past the step finds already written.
enum class Past {
  kBeforeStep,   // entries of groups completed before the step (Compress writes the step's)
  kThroughStep,  // also the entries the step completes (as Compress has run before the reader)
};

// Builds the step; every byte starts random (so a read of something never written shows), then
// the past is filled with valid data: window ring entries of the positions before the step, the
// compressors' carry rows, and encoded main / indexer entries of the completed groups.
inline HostStep MakeHostStep(const FakeLayout& l, const std::vector<SeqSpec>& seqs, Past past,
                             Random& rng) {
  HostStep h;
  h.seqs = seqs;
  int64_t blocks = 2;  // spare blocks nobody owns
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t i = 0; i < seqs[s].n; ++i) {
      h.positions.push_back(seqs[s].start + i);
      h.seq_of_row.push_back(static_cast<int32_t>(s));
    }
    blocks += (seqs[s].start + seqs[s].n + 127) / 128;
  }
  h.rows = static_cast<int64_t>(h.positions.size());
  h.num_blocks = blocks;
  std::vector<int32_t> ids(static_cast<size_t>(blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng.gen());
  size_t next = 0;
  for (const SeqSpec& s : seqs) {
    h.tables.emplace_back();
    for (int64_t b = 0; b < (s.start + s.n + 127) / 128; ++b)
      h.tables.back().push_back(ids[next++]);
  }
  h.pool = rng.Bytes(blocks * l.block_bytes);
  const KvEntryFormat& f = l.f;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t start = seqs[s].start, end = start + seqs[s].n;
    h.states.push_back(rng.Bytes(l.state_bytes));
    uint8_t* state = h.states.back().data();
    for (int64_t u = std::max<int64_t>(0, start - l.window); u < start; ++u) {
      std::vector<float> v = rng.Bf16Normals(l.head_dim);
      testing::ref::EncodeMainEntry(v.data(), f,
                                    state + l.window_offset + (u % l.window) * f.main_bytes);
    }
    auto carry = [&](int64_t offset, int64_t rows, int64_t width) {
      for (int64_t q = std::max<int64_t>(0, start - rows); q < start; ++q) {
        const std::vector<float> az = rng.Normals(2 * width);
        std::memcpy(state + offset + (q % rows) * 2 * width * 4, az.data(), az.size() * 4);
      }
    };
    if (l.ratio == 0) continue;
    carry(l.carry_offset, l.carry_rows, l.carry_width);
    const int64_t done = (past == Past::kBeforeStep ? start : end) / l.ratio;
    for (int64_t j = 0; j < done; ++j) {
      std::vector<float> v = rng.Bf16Normals(l.head_dim);
      testing::ref::EncodeMainEntry(v.data(), f,
                                    h.Entry(l, s, l.main_offset, l.ratio, f.main_bytes, j));
    }
    if (l.ratio != 4) continue;
    carry(l.index_carry_offset, l.index_carry_rows, 2 * f.index_dim);
    for (int64_t j = 0; j < done; ++j) {
      std::vector<float> v = rng.Bf16Normals(f.index_dim);
      testing::ref::EncodeIndexerEntry(v.data(), f.index_dim, f.index_bytes,
                                       h.Entry(l, s, l.index_offset, 4, f.index_bytes, j));
    }
  }
  return h;
}

// A HostStep in one backend's memory, with the StepBatch and KvPoolView the ops take.
class DeviceStep {
 public:
  DeviceStep(Backend& b, const HostStep& h, const FakeLayout& l) {
    pool_ = Buffer::Of(b, h.pool);
    for (size_t s = 0; s < h.seqs.size(); ++s) {
      states_.push_back(Buffer::Of(b, h.states[s]));
      tables_.push_back(Buffer::Of(b, h.tables[s]));
      host_seqs_.push_back(StepSequence{h.seqs[s].start, h.seqs[s].n, 0,
                                        states_.back().as<uint8_t>(),
                                        tables_.back().as<const int32_t>()});
    }
    int64_t row = 0;
    for (StepSequence& s : host_seqs_) {
      s.row = row;
      row += s.n;
    }
    positions_ = Buffer::Of(b, h.positions);
    seq_of_row_ = Buffer::Of(b, h.seq_of_row);
    seqs_ = Buffer::Of(b, host_seqs_);
    host_positions_ = h.positions;
    batch_.rows = h.rows;
    batch_.positions = positions_.as<const int64_t>();
    batch_.seq_of_row = seq_of_row_.as<const int32_t>();
    batch_.seqs = seqs_.as<const StepSequence>();
    batch_.host_seqs = host_seqs_;
    batch_.host_positions = host_positions_;
    view_.base = pool_.as<uint8_t>();
    view_.block_bytes = l.block_bytes;
  }
  DeviceStep(const DeviceStep&) = delete;
  DeviceStep& operator=(const DeviceStep&) = delete;

  const StepBatch& batch() const { return batch_; }
  const KvPoolView& pool() const { return view_; }
  std::vector<uint8_t> PoolBytes() const { return pool_.Read<uint8_t>(); }
  std::vector<uint8_t> StateBytes(size_t s) const { return states_[s].Read<uint8_t>(); }

 private:
  Buffer pool_, positions_, seq_of_row_, seqs_;
  std::vector<Buffer> states_, tables_;
  std::vector<StepSequence> host_seqs_;
  std::vector<int64_t> host_positions_;
  StepBatch batch_;
  KvPoolView view_;
};

}  // namespace strata::engine::backend_test
