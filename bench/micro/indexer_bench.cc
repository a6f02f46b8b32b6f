// CpuBackend::IndexerTopK (the lightning indexer) at long contexts, against the machine's integer
// dot-product peak.
//
//   indexer_bench [--threads=N] [--isa=auto|generic|avx2|avx512|avx512bf16] [--results=NAME]
//
// (Results go to bench/results/indexer.tsv; --results= with no name only prints them.)
//
// One prefill chunk of 512 rows (tiny's indexer: 8 heads × 128, top-16) at the end of a context
// of 64K, 256K and 1M tokens, i.e. over 16K, 64K and 256K compressed keys: queries and keys are
// simulated FP4 values of random normals, head weights BF16 of both signs, as the model makes
// them. The figure is (row, visible key) pairs scored per second; the limit is what the exact
// integer dot products of every head would allow at the measured vpdpbusd peak of the same
// threads (8 heads × 128 products per pair, 64 per instruction; pruning by the score bound lets
// the figure exceed it). Each case also prints what the indexer would cost in a cold 1M-token
// prefill of tiny (two CSA layers, Σ_t (t+1)/4 pairs) at that case's rate. Best of 3 runs.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/report.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/vector_ops.h"
#include "engine/kv/kv_codec.h"
#include "engine/numerics.h"

namespace strata::bench {
namespace {

using engine::CpuBackend;
using engine::CpuIsa;

constexpr int64_t kHeads = 8, kDim = 128, kTopK = 16, kRows = 512;
constexpr int64_t kEntryBytes = kDim / 2 + kDim / 32;  // 68
constexpr int64_t kPerBlock = 32;                      // indexer entries per 128-token block

// vpdpbusd (zmm) per second on `threads` threads, independent accumulators; 0 without VNNI.
double MeasureVnniPeak(int threads) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512vnni")) return 0;
  constexpr int64_t kIters = 20'000'000;
  auto one = [] {
    for (int64_t i = 0; i < kIters; ++i) {
      __asm__ volatile(
          "vpdpbusd %%zmm20, %%zmm21, %%zmm0\n vpdpbusd %%zmm20, %%zmm21, %%zmm1\n"
          "vpdpbusd %%zmm20, %%zmm21, %%zmm2\n vpdpbusd %%zmm20, %%zmm21, %%zmm3\n"
          "vpdpbusd %%zmm20, %%zmm21, %%zmm4\n vpdpbusd %%zmm20, %%zmm21, %%zmm5\n"
          "vpdpbusd %%zmm20, %%zmm21, %%zmm6\n vpdpbusd %%zmm20, %%zmm21, %%zmm7\n"
          "vpdpbusd %%zmm20, %%zmm21, %%zmm8\n vpdpbusd %%zmm20, %%zmm21, %%zmm9\n"
          "vpdpbusd %%zmm20, %%zmm21, %%zmm10\n vpdpbusd %%zmm20, %%zmm21, %%zmm11\n" ::
              : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                "xmm10", "xmm11");
    }
  };
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(one);
  one();
  for (std::thread& t : pool) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(threads) * kIters * 12 / s;
#else
  (void)threads;
  return 0;
#endif
}

struct Setup {
  std::vector<uint8_t> pool;  // blocks of kPerBlock indexer entries
  std::vector<int32_t> blocks;
  std::vector<float> q, w;  // [kRows][kHeads][kDim], [kRows][kHeads]
};

Setup MakeSetup(int64_t max_tokens) {
  Setup s;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const int64_t keys = max_tokens / 4, nblocks = (keys + kPerBlock - 1) / kPerBlock;
  s.pool.assign(static_cast<size_t>(nblocks * kPerBlock * kEntryBytes), 0);
  const engine::IndexerEntryCodec codec{kDim, kEntryBytes};
  std::vector<float> v(kDim);
  for (int64_t j = 0; j < keys; ++j) {
    for (float& x : v) x = engine::RoundToBf16(normal(rng));
    codec.Encode(v.data(), s.pool.data() + j * kEntryBytes);
  }
  for (int64_t b = 0; b < nblocks; ++b) s.blocks.push_back(static_cast<int32_t>(b));
  s.q.resize(static_cast<size_t>(kRows * kHeads * kDim));
  for (float& x : s.q) x = engine::RoundToBf16(0.5f * normal(rng));
  engine::cpu::SimulateFp4(s.q.data(), static_cast<int64_t>(s.q.size()));
  s.w.resize(static_cast<size_t>(kRows * kHeads));
  const float scale = 1.0f / std::sqrt(128.0f) / std::sqrt(8.0f);
  for (float& x : s.w) x = engine::RoundToBf16(engine::RoundToBf16(2.0f * normal(rng)) * scale);
  return s;
}

int Run(int argc, char** argv) {
  int threads = 0;
  CpuIsa isa = CpuIsa::kAuto;
  std::string results = "indexer";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--results=", 0) == 0) results = a.substr(10);
    if (a.rfind("--threads=", 0) == 0) threads = std::atoi(a.c_str() + 10);
    if (a.rfind("--isa=", 0) == 0) {
      const std::string name = a.substr(6);
      for (CpuIsa c : {CpuIsa::kAuto, CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512,
                       CpuIsa::kAvx512Bf16}) {
        if (engine::CpuIsaName(c) == name) isa = c;
      }
    }
  }
  auto backend = CpuBackend::Create({.threads = threads, .isa = isa});
  if (!backend.ok()) {
    std::fprintf(stderr, "indexer_bench: %s\n", std::string(backend.status().message()).c_str());
    return 1;
  }
  CpuBackend& b = **backend;
  const double peak = MeasureVnniPeak(b.threads());
  const int64_t contexts[] = {65536, 262144, 1048576};
  const Setup setup = MakeSetup(contexts[2]);
  const engine::KvEntryFormat f{.index_dim = kDim, .index_bytes = kEntryBytes};
  const engine::KvPoolView view{const_cast<uint8_t*>(setup.pool.data()), kPerBlock * kEntryBytes};
  std::vector<int32_t> chosen(static_cast<size_t>(kRows * kTopK)), count(kRows);
  std::printf("indexer_bench: %s, %d threads, vpdpbusd peak %.3g/s\n",
              std::string(engine::CpuIsaName(b.isa())).c_str(), b.threads(), peak);
  for (int64_t tokens : contexts) {
    const int64_t start = tokens - kRows;
    std::vector<int64_t> positions(kRows);
    std::vector<int32_t> seq_of_row(kRows, 0);
    for (int64_t i = 0; i < kRows; ++i) positions[static_cast<size_t>(i)] = start + i;
    const engine::StepSequence seq{start, kRows, 0, nullptr, setup.blocks.data()};
    engine::StepBatch step;
    step.rows = kRows;
    step.positions = positions.data();
    step.seq_of_row = seq_of_row.data();
    step.seqs = &seq;
    step.host_seqs = absl::MakeConstSpan(&seq, 1);
    step.host_positions = positions;
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      b.IndexerTopK(step, engine::IndexerParams{kHeads, kDim, kTopK, 0}, f, setup.q.data(),
                    setup.w.data(), view, chosen.data(), count.data());
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    double pairs = 0;
    for (int64_t i = 0; i < kRows; ++i) pairs += static_cast<double>((start + i + 1) / 4);
    const double rate = pairs / best;
    // Every pair: kHeads · kDim / 64 vpdpbusd for the exact integer dots of all heads.
    const double limit = peak / (kHeads * kDim / 64.0);
    const double prefill_pairs = 2.0 * (1048576.0 * 1048576.0 / 8.0);  // two CSA layers
    std::printf("  context %lld tokens (%lld keys): %.3f s per 512-row chunk; a 1M-token prefill's"
                " indexer at this rate: %.0f s\n",
                static_cast<long long>(tokens), static_cast<long long>(tokens / 4), best,
                prefill_pairs / rate);
    Report({"indexer_topk_tiny_ctx" + std::to_string(tokens / 1024) + "k", rate / 1e9,
            "Gpairs/s", limit / 1e9},
           results);
  }
  return 0;
}

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) { return strata::bench::Run(argc, argv); }
