// CpuBackend::Linear throughput against what the machine can do.
//
//   linear_bench [--threads=N] [--isa=auto|generic|avx2|avx512|avx512bf16] [--benchmark_filter=...]
//
// Decode (n = 1, 8, 32 activation rows) is limited by memory bandwidth: every weight byte is read
// once per call. The figure is GB/s of weight bytes (data + scales), held to half of this
// machine's measured streaming-read bandwidth (all threads, a buffer far larger than the caches).
// Every call reads a different copy of the weights (at least 8x the last-level cache in all), so
// the bytes come from DRAM, as they do in a model far larger than the caches.
// Prefill (n = 512) is limited by arithmetic: GFLOP/s (2·n·rows·cols per call), held to half of
// the measured peak of the instructions the kernels use on the same threads (FP32 FMA, or
// vdpbf16ps with the avx512bf16 kernels). Activations are BF16 values, as the model's are.
// The routed_experts cases run CpuBackend::RoutedExperts at decode (n = 1, 8 tokens, 6 of 64 FP4
// experts each, the small preset's shapes): GB/s of the chosen experts' weight bytes, held to
// half the read bandwidth like the linears; 8 copies of the 64 experts keep them out of cache.
// Every case runs the backend as the model does (batch_invariant: one summation order for any
// number of rows); the *_strip prefill cases show batch_invariant off (the strip form).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/report.h"
#include "benchmark/benchmark.h"
#include "common/thread_pool.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/numerics.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace strata::bench {
namespace {

using engine::CpuBackend;
using engine::CpuIsa;
using engine::WeightFormat;
using engine::WeightView;

constexpr int64_t kCacheBytes = int64_t{32} << 20;  // this machine's L3; more is harmless

int g_threads = 0;
CpuIsa g_isa = CpuIsa::kAuto;

// The backend as the model uses it (batch_invariant: the dot form for every row count), or with
// batch_invariant off (the strip form for many rows: faster prefill, other last bits).
CpuBackend& Backend(bool batch_invariant = true) {
  static CpuBackend* backends[2] = {nullptr, nullptr};
  CpuBackend*& backend = backends[batch_invariant ? 1 : 0];
  if (backend == nullptr) {
    auto created = CpuBackend::Create(
        {.threads = g_threads, .isa = g_isa, .batch_invariant = batch_invariant});
    if (!created.ok()) {
      std::fprintf(stderr, "linear_bench: %s\n", std::string(created.status().message()).c_str());
      std::exit(1);
    }
    backend = created->release();
  }
  return *backend;
}

// ---- machine limits ------------------------------------------------------------------------

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Streaming read of 1 GiB split across the threads; best of 5 passes. GB/s (10^9 bytes).
double MeasureReadBandwidth(int threads) {
  const size_t bytes = size_t{1} << 30;
  const size_t words = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
  ThreadPool pool(threads);
  pool.ParallelFor(threads, [&](size_t t) {  // first touch by the reading threads
    const size_t begin = words / threads * t,
                 end = t + 1 == size_t(threads) ? words : begin + words / threads;
    for (size_t i = begin; i < end; ++i) buf[i] = i;
  });
  std::atomic<uint64_t> sink{0};
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(threads, [&](size_t t) {
      const size_t begin = words / threads * t;
      const size_t end = t + 1 == size_t(threads) ? words : begin + words / threads;
      uint64_t s[8] = {};
      for (size_t i = begin; i + 8 <= end; i += 8) {
        for (int j = 0; j < 8; ++j) s[j] += buf[i + j];
      }
      sink += s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    });
    best = std::max(best, static_cast<double>(bytes) / Seconds(start) / 1e9);
  }
  benchmark::DoNotOptimize(sink.load());
  return best;
}

constexpr int kChains = 24;

#if defined(__x86_64__)
// Enough independent chains (24) per thread to be throughput-bound: the arithmetic roof.
__attribute__((target("avx512f,fma"))) double FmaLoop512(int64_t iters) {
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  float out[16];
  __m512 s = acc[0];
  for (int j = 1; j < kChains; ++j) s = _mm512_add_ps(s, acc[j]);
  _mm512_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f,avx512bf16"))) double DpBf16Loop512(int64_t iters) {
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3F80));
  const __m512bh b = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3380));
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
  }
  float out[16];
  __m512 s = acc[0];
  for (int j = 1; j < kChains; ++j) s = _mm512_add_ps(s, acc[j]);
  _mm512_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx2,fma"))) double FmaLoop256(int64_t iters) {
  __m256 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  float out[8];
  __m256 s = acc[0];
  for (int j = 1; j < kChains; ++j) s = _mm256_add_ps(s, acc[j]);
  _mm256_storeu_ps(out, s);
  return out[0];
}
#endif

// FLOP/s (2 per multiply-add) of the backend's multiply-add instruction on `threads` threads:
// FP32 FMA, or with bf16 = true vdpbf16ps (32 multiply-adds per instruction).
double MeasurePeak(int threads, CpuIsa isa, bool bf16) {
  int lanes = 1;  // portable kernels: count scalar multiply-adds
  std::function<double(int64_t)> loop = [](int64_t iters) {
    float acc[kChains] = {};
    for (int64_t i = 0; i < iters; ++i) {
      for (int j = 0; j < kChains; ++j) acc[j] = acc[j] * 0.999999f + 1e-7f;
    }
    return static_cast<double>(acc[0] + acc[kChains - 1]);
  };
#if defined(__x86_64__)
  if (isa == CpuIsa::kAvx512Bf16 && bf16) {
    lanes = 32;
    loop = DpBf16Loop512;
  } else if (isa == CpuIsa::kAvx512 || isa == CpuIsa::kAvx512Bf16) {
    lanes = 16;
    loop = FmaLoop512;
  } else if (isa == CpuIsa::kAvx2) {
    lanes = 8;
    loop = FmaLoop256;
  }
#endif
  const int64_t iters = int64_t{1} << 24;
  ThreadPool pool(threads);
  std::atomic<double> sink{0};
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(threads, [&](size_t) { sink = sink + loop(iters); });
    best = std::max(best,
                    2.0 * kChains * lanes * static_cast<double>(iters) * threads / Seconds(start));
  }
  benchmark::DoNotOptimize(sink.load());
  return best / 1e9;
}

// ---- weights -------------------------------------------------------------------------------

// `copies` copies of one random weight matrix, each in its own allocation.
struct WeightCopies {
  std::vector<std::vector<uint8_t>> data;
  std::vector<std::vector<uint8_t>> scale;
  std::vector<WeightView> views;
  int64_t bytes_per_copy = 0;  // data + scales
};

WeightCopies MakeWeights(WeightFormat format, int64_t rows, int64_t cols, int copies) {
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint8_t> data, scale;
  switch (format) {
    case WeightFormat::kFp8Block:
      data.resize(rows * cols);
      for (uint8_t& b : data) b = engine::FloatToE4M3(normal(rng) * 64.0f);
      scale.resize(((rows + 127) / 128) * ((cols + 127) / 128));
      break;
    case WeightFormat::kFp4Block:
      data.resize(rows * cols / 2);
      for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
      scale.resize(rows * (cols / 32));
      break;
    case WeightFormat::kBf16:
      data.resize(rows * cols * 2);
      for (int64_t i = 0; i < rows * cols; ++i) {
        const uint16_t h = engine::FloatToBf16(normal(rng) * 0.02f);
        std::memcpy(&data[2 * i], &h, 2);
      }
      break;
    case WeightFormat::kF32:
      data.resize(rows * cols * 4);
      for (int64_t i = 0; i < rows * cols; ++i) {
        const float f = normal(rng) * 0.02f;
        std::memcpy(&data[4 * i], &f, 4);
      }
      break;
  }
  for (uint8_t& s : scale) s = static_cast<uint8_t>(118 + rng() % 4);
  WeightCopies w;
  w.bytes_per_copy = static_cast<int64_t>(data.size() + scale.size());
  for (int c = 0; c < copies; ++c) {
    w.data.push_back(data);
    w.scale.push_back(scale);
  }
  for (int c = 0; c < copies; ++c) {
    w.views.push_back(WeightView{format, w.data[c].data(),
                                 scale.empty() ? nullptr : w.scale[c].data(), rows, cols});
  }
  return w;
}

std::string FormatName(WeightFormat f) { return std::string(WeightFormatName(f)); }

struct Case {
  std::string name;
  WeightFormat format;
  int64_t rows, cols, n;
  bool prefill;
  bool batch_invariant = true;
};

// Seconds per call of each case, as Google Benchmark measured it.
std::map<std::string, double>& Timings() {
  static auto* timings = new std::map<std::string, double>();
  return *timings;
}

void RunCase(benchmark::State& state, const Case& c) {
  // Enough copies that the ones cycled through exceed the caches 8x (decode); prefill reuses
  // each weight n times from cache anyway, so one copy.
  const int64_t one = c.format == WeightFormat::kFp4Block ? c.rows * c.cols / 2 : c.rows * c.cols;
  const int copies =
      c.prefill ? 1 : static_cast<int>(std::max<int64_t>(2, 8 * kCacheBytes / one + 1));
  const WeightCopies w = MakeWeights(c.format, c.rows, c.cols, copies);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(c.n * c.cols), y(c.n * c.rows);
  for (float& v : x) v = engine::RoundToBf16(normal(rng));
  CpuBackend& backend = Backend(c.batch_invariant);
  backend.Linear(w.views[0], x.data(), c.n, y.data());  // warm-up: buffers grow once
  size_t next = 0;
  for (auto _ : state) {
    backend.Linear(w.views[next], x.data(), c.n, y.data());
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % w.views.size();
  }
  const double calls = static_cast<double>(state.iterations());
  state.counters["weight_GB/s"] = benchmark::Counter(
      calls * static_cast<double>(w.bytes_per_copy) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(
      calls * 2.0 * static_cast<double>(c.n * c.rows * c.cols) / 1e9, benchmark::Counter::kIsRate);
}

// ---- routed experts at decode ------------------------------------------------------------------

struct ExpertsCase {
  std::string name;
  int64_t experts, k, d, inter, n;
};

// Bytes of expert weights each call reads, for the cases' figures.
std::map<std::string, double>& ExpertBytes() {
  static auto* bytes = new std::map<std::string, double>();
  return *bytes;
}

void RunExpertsCase(benchmark::State& state, const ExpertsCase& c) {
  const int sets = 8;  // 8 copies of every expert: > 8x the last-level cache for small's experts
  const WeightCopies w1 = MakeWeights(WeightFormat::kFp4Block, c.inter, c.d, sets * c.experts);
  const WeightCopies w3 = MakeWeights(WeightFormat::kFp4Block, c.inter, c.d, sets * c.experts);
  const WeightCopies w2 = MakeWeights(WeightFormat::kFp4Block, c.d, c.inter, sets * c.experts);
  std::vector<std::vector<engine::ExpertWeights>> expert_sets(sets);
  for (int s = 0; s < sets; ++s) {
    for (int64_t e = 0; e < c.experts; ++e) {
      const size_t i = static_cast<size_t>(s * c.experts + e);
      expert_sets[s].push_back({w1.views[i], w3.views[i], w2.views[i]});
    }
  }
  // Routes: k distinct experts per token, a new draw per call (16 kept, cycled).
  std::mt19937 rng(9);
  std::vector<std::vector<int32_t>> routes(16);
  int64_t chosen_total = 0;
  for (auto& ids : routes) {
    std::vector<bool> used(static_cast<size_t>(c.experts), false);
    for (int64_t t = 0; t < c.n; ++t) {
      std::vector<int32_t> all(static_cast<size_t>(c.experts));
      for (int64_t e = 0; e < c.experts; ++e) all[e] = static_cast<int32_t>(e);
      std::shuffle(all.begin(), all.end(), rng);
      ids.insert(ids.end(), all.begin(), all.begin() + c.k);
      for (int64_t j = 0; j < c.k; ++j) used[all[j]] = true;
    }
    chosen_total += std::count(used.begin(), used.end(), true);
  }
  ExpertBytes()[c.name] = static_cast<double>(chosen_total) / 16.0 *
                          static_cast<double>(2 * engine::WeightBytes(WeightFormat::kFp4Block, c.inter, c.d) +
                                              engine::WeightBytes(WeightFormat::kFp4Block, c.d, c.inter));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(c.n * c.d), out(c.n * c.d), weights(c.n * c.k, 0.4f);
  for (float& v : x) v = engine::RoundToBf16(normal(rng));
  CpuBackend& backend = Backend();
  size_t next = 0;
  for (auto _ : state) {
    const absl::Status status =
        backend.RoutedExperts(expert_sets[next % sets], x.data(), c.n, routes[next % 16].data(),
                              weights.data(), c.k, 10.0f, out.data());
    if (!status.ok()) state.SkipWithError(std::string(status.message()).c_str());
    benchmark::DoNotOptimize(out.data());
    ++next;
  }
}

std::vector<ExpertsCase> ExpertsCases() {
  return {{"routed_experts_fp4_64x1024x512_k6_n1", 64, 6, 1024, 512, 1},
          {"routed_experts_fp4_64x1024x512_k6_n8", 64, 6, 1024, 512, 8}};
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  struct Matrix {
    WeightFormat format;
    int64_t rows, cols;
  };
  const Matrix decode[] = {{WeightFormat::kFp8Block, 4096, 4096},
                           {WeightFormat::kFp8Block, 7168, 1536},
                           {WeightFormat::kFp4Block, 2048, 4096},
                           {WeightFormat::kFp4Block, 4096, 2048},
                           {WeightFormat::kBf16, 4096, 4096},
                           // the small preset's attention linears: per-call costs dominate
                           {WeightFormat::kFp8Block, 512, 1024},
                           {WeightFormat::kBf16, 256, 1024}};
  for (const Matrix& m : decode) {
    for (int64_t n : {1, 8, 32}) {
      cases.push_back({"linear_" + FormatName(m.format) + "_" + std::to_string(m.rows) + "x" +
                           std::to_string(m.cols) + "_n" + std::to_string(n),
                       m.format, m.rows, m.cols, n, false});
    }
  }
  const Matrix prefill[] = {{WeightFormat::kFp8Block, 4096, 4096},
                            {WeightFormat::kFp4Block, 2048, 4096},
                            {WeightFormat::kBf16, 4096, 4096}};
  for (const Matrix& m : prefill) {
    const std::string name = "linear_" + FormatName(m.format) + "_" + std::to_string(m.rows) + "x" +
                             std::to_string(m.cols) + "_n512";
    cases.push_back({name, m.format, m.rows, m.cols, 512, true});
    cases.push_back({name + "_strip", m.format, m.rows, m.cols, 512, true, false});
  }
  return cases;
}

class CapturingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration || run.error_occurred || run.iterations == 0) continue;
      const std::string name = run.benchmark_name();  // "<case>/min_time:.../real_time"
      Timings()[name.substr(0, name.find('/'))] =
          run.real_accumulated_time / static_cast<double>(run.iterations);
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  using namespace strata::bench;  // NOLINT: one function
  // Our flags, removed before Google Benchmark parses the rest.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--threads=", 0) == 0) {
      g_threads = std::atoi(arg.c_str() + 10);
    } else if (arg.rfind("--isa=", 0) == 0) {
      const std::string isa = arg.substr(6);
      g_isa = isa == "generic"      ? CpuIsa::kGeneric
              : isa == "avx2"       ? CpuIsa::kAvx2
              : isa == "avx512"     ? CpuIsa::kAvx512
              : isa == "avx512bf16" ? CpuIsa::kAvx512Bf16
                                    : CpuIsa::kAuto;
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  CpuBackend& backend = Backend();
  const int threads = backend.threads();
  std::printf("linear_bench: %d threads, kernels %s\n", threads,
              std::string(strata::engine::CpuIsaName(backend.isa())).c_str());
  const bool bf16 = backend.isa() == CpuIsa::kAvx512Bf16;
  // The machine is shared: measure before and after, and hold the kernels to the better figure.
  double bandwidth = MeasureReadBandwidth(threads);
  double fma_peak = MeasurePeak(threads, backend.isa(), false);
  double bf16_peak = bf16 ? MeasurePeak(threads, backend.isa(), true) : 0;
  std::printf("machine: streaming read %.1f GB/s, FP32 FMA peak %.0f GFLOP/s", bandwidth, fma_peak);
  if (bf16) std::printf(", vdpbf16ps peak %.0f GFLOP/s", bf16_peak);
  std::printf(" (%d threads)\n", threads);

  const std::vector<Case> cases = Cases();
  for (const Case& c : cases) {
    benchmark::RegisterBenchmark(c.name.c_str(), [c](benchmark::State& s) { RunCase(s, c); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(c.prefill ? 2.0 : 1.0);
  }
  for (const ExpertsCase& c : ExpertsCases()) {
    benchmark::RegisterBenchmark(c.name.c_str(),
                                 [c](benchmark::State& s) { RunExpertsCase(s, c); })
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(1.0);
  }
  CapturingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  bandwidth = std::max(bandwidth, MeasureReadBandwidth(threads));
  fma_peak = std::max(fma_peak, MeasurePeak(threads, backend.isa(), false));
  if (bf16) bf16_peak = std::max(bf16_peak, MeasurePeak(threads, backend.isa(), true));
  const std::string suffix = "_" + std::to_string(threads) + "t";
  // The references the figures are held to (their own limits: ratio 1).
  Report({"memory_read_bandwidth" + suffix, bandwidth, "GB/s", bandwidth}, "linear");
  Report({"fp32_fma_peak" + suffix, fma_peak, "GFLOP/s", fma_peak}, "linear");
  if (bf16) Report({"bf16_dot_peak" + suffix, bf16_peak, "GFLOP/s", bf16_peak}, "linear");
  bool ran = false;
  for (const Case& c : cases) {
    auto it = Timings().find(c.name);
    if (it == Timings().end() || it->second <= 0) continue;
    ran = true;
    const double seconds = it->second;
    if (c.prefill) {
      const double gflops = 2.0 * static_cast<double>(c.n * c.rows * c.cols) / seconds / 1e9;
      // With the avx512bf16 kernels every format here runs on vdpbf16ps (BF16 activations).
      const double peak = bf16 ? bf16_peak : fma_peak;
      Report({c.name + suffix, gflops, "GFLOP/s", 0.5 * peak}, "linear");
      std::printf("    = %.0f%% of the measured peak\n", 100.0 * gflops / peak);
    } else {
      const double bytes = static_cast<double>(strata::engine::WeightBytes(c.format, c.rows, c.cols));
      const double gbps = bytes / seconds / 1e9;
      Report({c.name + suffix, gbps, "GB/s", 0.5 * bandwidth}, "linear");
      std::printf("    = %.0f%% of the measured read bandwidth\n", 100.0 * gbps / bandwidth);
    }
  }
  for (const ExpertsCase& c : ExpertsCases()) {
    auto it = Timings().find(c.name);
    if (it == Timings().end() || it->second <= 0) continue;
    ran = true;
    const double gbps = ExpertBytes()[c.name] / it->second / 1e9;
    Report({c.name + suffix, gbps, "GB/s", 0.5 * bandwidth}, "linear");
    std::printf("    = %.0f%% of the measured read bandwidth\n", 100.0 * gbps / bandwidth);
  }
  return ran ? 0 : 1;
}
