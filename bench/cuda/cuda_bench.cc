// cuda_bench: the CUDA backend's speed on a Hopper GPU (issue #5's figures). Built only with
// nvcc (STRATA_WITH_CUDA); run on the GPU machine from the folder deploy/gpu/pack.sh makes.
//
//   cuda_bench [--results DIR/NAME] [--model-cache DIR] [--tokenizer-dir DIR] [--quick]
//
// 1. Kernels on flash-sized shapes through the engine::Backend ops: FP8 linears at decode batch
//    sizes (achieved HBM bandwidth next to the GPU's peak), the same at prefill sizes (TFLOP/s
//    next to the dense FP8 peak, and cuBLAS BF16 on the same shape), the routed FP4 experts
//    (HBM bandwidth).
// 2. The model: decode tokens/s for the small preset and for flash's first four layers (one of
//    each attention kind at flash's sizes) at batch 1–256 and context 8K–1M, prefill tokens/s at
//    8K, through the engine bench (bench/engine_bench.h) with the CUDA backend, against the
//    device's measured copy bandwidth; its attention figures come from these steps.
// Each figure is printed with its limit and ratio and appended to the results file.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/engine_bench.h"
#include "bench/report.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/kv/kv_codec.h"
#include "engine/kv/kv_layout.h"
#include "engine/model_config.h"
#include "engine/numerics.h"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;
using engine::Backend;
using engine::DeviceBuffer;
using engine::WeightFormat;
using engine::WeightView;

struct Peaks {
  std::string name;
  double hbm = 0;        // bytes/s
  double fp8_dense = 0;  // FLOP/s
  double bf16_dense = 0;
};

// Datasheet peaks of the SXM parts (dense, no sparsity); other GPUs get H100's as a stand-in.
Peaks DevicePeaks() {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  Peaks p{prop.name, 3.35e12, 1979e12, 989e12};
  if (std::strstr(prop.name, "H200") != nullptr) p.hbm = 4.8e12;
  return p;
}

// Device memory filled with bytes from `host`, freed with the backend.
DeviceBuffer Upload(Backend& b, const void* host, int64_t bytes) {
  auto buf = DeviceBuffer::Allocate(b, bytes);
  if (!buf.ok()) {
    std::fprintf(stderr, "cuda_bench: %s\n", std::string(buf.status().message()).c_str());
    std::exit(1);
  }
  b.ToDevice(buf->get(), host, bytes);
  return std::move(*buf);
}

// Seconds per call of `op`, timed over enough calls to last ~0.2 s, synchronised by a 4-byte read.
template <typename Op>
double TimePerCall(Backend& b, const DeviceBuffer& sync, Op op) {
  float f;
  op();
  b.ToHost(&f, sync.get(), 4);
  int calls = 1;
  for (;;) {
    const auto start = Clock::now();
    for (int i = 0; i < calls; ++i) op();
    b.ToHost(&f, sync.get(), 4);
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (s > 0.2 || calls > (1 << 16)) return s / calls;
    calls *= 4;
  }
}

// An FP8 block-scaled weight with scales that keep values in range.
struct Fp8Weight {
  DeviceBuffer data, scale;
  WeightView view;
};
Fp8Weight MakeFp8(Backend& b, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
  std::uniform_int_distribution<int> code(0, 0x7E);
  for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng) | (rng() & 1 ? 0x80 : 0));
  std::vector<uint8_t> scales(static_cast<size_t>(((rows + 127) / 128) * ((cols + 127) / 128)),
                              127 - 8);
  Fp8Weight w{Upload(b, codes.data(), rows * cols),
              Upload(b, scales.data(), static_cast<int64_t>(scales.size())),
              {}};
  w.view = WeightView{WeightFormat::kFp8Block, w.data.get(), w.scale.as<uint8_t>(), rows, cols};
  return w;
}

DeviceBuffer Activations(Backend& b, int64_t n, int64_t cols, std::mt19937& rng) {
  std::vector<float> x(static_cast<size_t>(n * cols));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : x) v = engine::RoundToBf16(dist(rng));
  return Upload(b, x.data(), n * cols * 4);
}

// cuBLAS BF16 GEMM (FP32 accumulate) on the same shape: y[n, rows] = x[n, cols]·Wᵀ.
double CublasBf16Seconds(int64_t rows, int64_t cols, int64_t n) {
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 0;
  void *w, *x, *y;
  cudaMalloc(&w, static_cast<size_t>(rows * cols * 2));
  cudaMalloc(&x, static_cast<size_t>(n * cols * 2));
  cudaMalloc(&y, static_cast<size_t>(n * rows * 2));
  cudaMemset(w, 0x3C, static_cast<size_t>(rows * cols * 2));
  cudaMemset(x, 0x3C, static_cast<size_t>(n * cols * 2));
  const float alpha = 1, beta = 0;
  auto gemm = [&] {
    cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), static_cast<int>(n),
                 static_cast<int>(cols), &alpha, w, CUDA_R_16BF, static_cast<int>(cols), x,
                 CUDA_R_16BF, static_cast<int>(cols), &beta, y, CUDA_R_16BF, static_cast<int>(rows),
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  gemm();
  cudaDeviceSynchronize();
  int calls = 1;
  double per_call = 0;
  for (;;) {
    const auto start = Clock::now();
    for (int i = 0; i < calls; ++i) gemm();
    cudaDeviceSynchronize();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (s > 0.2 || calls > (1 << 14)) {
      per_call = s / calls;
      break;
    }
    calls *= 4;
  }
  cudaFree(w);
  cudaFree(x);
  cudaFree(y);
  cublasDestroy(handle);
  return per_call;
}

void BenchLinears(Backend& b, const Peaks& peaks, const std::string& results, bool quick) {
  std::mt19937 rng(1);
  struct Shape {
    const char* name;
    int64_t rows, cols;
  };
  // Flash: wq_b (H·c × q_lora), wo_b (d × G·o_lora), the shared expert's w1 (inter × d).
  const Shape shapes[] = {
      {"wq_b", 64 * 512, 1024}, {"wo_b", 4096, 8192}, {"shared_w1", 2048, 4096}};
  for (const Shape& s : shapes) {
    Fp8Weight w = MakeFp8(b, s.rows, s.cols, rng);
    const std::vector<int64_t> decode =
        quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 8, 64, 256};
    for (int64_t n : decode) {
      DeviceBuffer x = Activations(b, n, s.cols, rng);
      auto y = DeviceBuffer::Allocate(b, n * s.rows * 4);
      const double sec =
          TimePerCall(b, *y, [&] { b.Linear(w.view, x.as<float>(), n, y->as<float>()); });
      const double bytes =
          static_cast<double>(s.rows * s.cols) + 4.0 * static_cast<double>(n * (s.rows + s.cols));
      Report({absl::StrCat("linear_fp8_", s.name, "_n", n, "_hbm"), bytes / sec / 1e9, "GB/s",
              0.7 * peaks.hbm / 1e9},
             results);
    }
    for (int64_t n : {int64_t{2048}, int64_t{8192}}) {
      if (quick && n > 2048) continue;
      DeviceBuffer x = Activations(b, n, s.cols, rng);
      auto y = DeviceBuffer::Allocate(b, n * s.rows * 4);
      const double sec =
          TimePerCall(b, *y, [&] { b.Linear(w.view, x.as<float>(), n, y->as<float>()); });
      const double flops = 2.0 * static_cast<double>(n * s.rows * s.cols);
      Report({absl::StrCat("linear_fp8_", s.name, "_n", n, "_tflops"), flops / sec / 1e12,
              "TFLOP/s", 0.6 * peaks.fp8_dense / 1e12},
             results);
      const double cublas = CublasBf16Seconds(s.rows, s.cols, n);
      if (cublas > 0) {
        Report({absl::StrCat("linear_fp8_", s.name, "_n", n, "_vs_cublas_bf16"), cublas / sec, "x",
                1.0},
               results);
      }
    }
  }
}

void BenchExperts(Backend& b, const Peaks& peaks, const std::string& results, bool quick) {
  // Flash's routed experts: 256 × (w1, w3 [2048, 4096], w2 [4096, 2048]) in FP4, top-6.
  const int64_t E = 256, k = 6, d = 4096, inter = 2048;
  std::mt19937 rng(2);
  std::vector<uint8_t> packed(static_cast<size_t>(inter * d / 2));
  for (uint8_t& v : packed) v = static_cast<uint8_t>(rng());
  std::vector<uint8_t> scales(static_cast<size_t>(inter * d / 32), 127 - 2);
  // One set of bytes shared by every expert would sit in L2: each expert gets its own copy.
  std::vector<DeviceBuffer> memory;
  std::vector<engine::ExpertWeights> experts;
  for (int64_t e = 0; e < E; ++e) {
    engine::ExpertWeights ew;
    WeightView* views[3] = {&ew.w1, &ew.w3, &ew.w2};
    for (int i = 0; i < 3; ++i) {
      memory.push_back(Upload(b, packed.data(), static_cast<int64_t>(packed.size())));
      memory.push_back(Upload(b, scales.data(), static_cast<int64_t>(scales.size())));
      const bool down = i == 2;
      *views[i] = WeightView{WeightFormat::kFp4Block, memory[memory.size() - 2].get(),
                             memory.back().as<uint8_t>(), down ? d : inter, down ? inter : d};
    }
    experts.push_back(ew);
  }
  const double expert_bytes =
      3.0 * (static_cast<double>(inter * d) / 2 + static_cast<double>(inter * d) / 32);
  for (int64_t n : quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 8, 64, 256}) {
    std::vector<int32_t> ids(static_cast<size_t>(n * k));
    std::vector<float> weights(static_cast<size_t>(n * k), 1.0f / k);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t j = 0; j < k; ++j)
        ids[static_cast<size_t>(t * k + j)] = static_cast<int32_t>((t * 37 + j * 41) % E);
    }
    std::vector<bool> touched(static_cast<size_t>(E), false);
    for (int32_t e : ids) touched[static_cast<size_t>(e)] = true;
    const double touched_bytes =
        expert_bytes * static_cast<double>(std::count(touched.begin(), touched.end(), true));
    DeviceBuffer x = Activations(b, n, d, rng);
    DeviceBuffer dids = Upload(b, ids.data(), n * k * 4), dw = Upload(b, weights.data(), n * k * 4);
    auto y = DeviceBuffer::Allocate(b, n * d * 4);
    const double sec = TimePerCall(b, *y, [&] {
      (void)b.RoutedExperts(experts, x.as<float>(), n, dids.as<int32_t>(), dw.as<float>(), k, 10.0f,
                            y->as<float>());
    });
    Report({absl::StrCat("experts_fp4_flash_n", n, "_hbm"), touched_bytes / sec / 1e9, "GB/s",
            0.7 * peaks.hbm / 1e9},
           results);
  }
}

}  // namespace
}  // namespace strata::bench

int main(int argc, char** argv) {
  using namespace strata;  // NOLINT: a benchmark's main
  std::string results = "cuda", model_cache, tokenizer_dir;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--results") {
      results = next();
    } else if (a == "--model-cache") {
      model_cache = next();
    } else if (a == "--tokenizer-dir") {
      tokenizer_dir = next();
    } else if (a == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr,
                   "usage: cuda_bench [--results DIR/NAME] [--model-cache DIR] [--tokenizer-dir "
                   "DIR] [--quick]\n");
      return 2;
    }
  }
  if (engine::CudaDeviceCount() == 0) {
    std::fprintf(stderr, "cuda_bench: no CUDA device\n");
    return 1;
  }
  auto backend = engine::MakeCudaBackend({.device = 0});
  if (!backend.ok()) {
    std::fprintf(stderr, "cuda_bench: %s\n", std::string(backend.status().message()).c_str());
    return 1;
  }
  const bench::Peaks peaks = bench::DevicePeaks();
  bench::SetReportDevice(peaks.name);
  std::printf("device: %s, HBM peak %.2f TB/s, FP8 dense %.0f TFLOP/s\n", peaks.name.c_str(),
              peaks.hbm / 1e12, peaks.fp8_dense / 1e12);
  bench::BenchLinears(**backend, peaks, results, quick);
  bench::BenchExperts(**backend, peaks, results, quick);

  // The model, end to end: small, and one flash-sized layer.
  const char* home = std::getenv("HOME");
  if (model_cache.empty())
    model_cache = std::string(home != nullptr ? home : "/tmp") + "/.cache/strata/bench-models";
  // Flash is cut to two layers, one CSA and one HCA at flash's sizes, with 32 routed experts
  // instead of 256 (the experts' own figures are above): a model of ~3 GB the GPU machine makes
  // in seconds rather than 16 GB. Cases past 4M tokens in flight are skipped (their synthetic KV
  // takes minutes to make on the host).
  for (const std::string preset : {"small", "flash"}) {
    bench::EngineBenchOptions o;
    o.presets = {preset};
    if (preset == "flash") {
      o.layers = 2;
      o.variant = "csa-hca-e32";
      o.edit_config = [](engine::ModelConfig& c) {
        c.compress_ratios = {4, 128, 0};  // two layers, then the MTP layer
        c.n_routed_experts = 32;
        c.num_hash_layers = 1;
      };
    }
    o.batches = quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 8, 64, 256};
    o.contexts =
        quick ? std::vector<int64_t>{8192} : std::vector<int64_t>{8192, 131072, 1048576 - 64};
    o.max_batch_tokens = int64_t{4} << 20;
    o.long_context = 0;
    o.prefill_tokens = 8192;
    o.steps = 16;
    o.model_cache = model_cache;
    o.tokenizer_dir = tokenizer_dir;
    o.results = results;
    o.make_backend = [] { return engine::MakeCudaBackend({.device = 0}); };
    if (absl::Status s = bench::RunEngineBench(o); !s.ok()) {
      std::fprintf(stderr, "cuda_bench: %s: %s\n", preset.c_str(),
                   std::string(s.message()).c_str());
      return 1;
    }
  }
  return 0;
}
