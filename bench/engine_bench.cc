#include "bench/engine_bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "bench/report.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "engine/experts.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/kv_codec.h"
#include "engine/model.h"
#include "engine/model_writer.h"
#include "engine/numerics.h"
#include "engine/profiling_backend.h"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;
using engine::KvLayout;
using engine::ModelConfig;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Bytes of weights one decode step of `batch` tokens reads (each used weight once), and the KV
// bytes each sequence's step reads at `context` tokens.
double WeightBytesPerStep(const ModelConfig& c, int64_t batch) {
  auto fp8 = [](double rows, double cols) {
    return rows * cols + std::ceil(rows / 128) * std::ceil(cols / 128);
  };
  auto bf16 = [](double rows, double cols) { return 2 * rows * cols; };
  const double d = static_cast<double>(c.hidden_size),
               H = static_cast<double>(c.num_attention_heads);
  const double hd = static_cast<double>(c.head_dim), ql = static_cast<double>(c.q_lora_rank);
  const double G = static_cast<double>(c.o_groups), ol = static_cast<double>(c.o_lora_rank);
  const double hc = static_cast<double>(c.hc_mult), E = static_cast<double>(c.n_routed_experts);
  const double k = static_cast<double>(c.num_experts_per_tok),
               inter = static_cast<double>(c.moe_intermediate_size);
  const double ih = static_cast<double>(c.index_n_heads),
               ic = static_cast<double>(c.index_head_dim);
  const double expert = 3 * (inter * d / 2 + inter * d / 32);
  const double touched = E * (1 - std::pow(1 - k / E, static_cast<double>(batch)));
  double total = bf16(static_cast<double>(c.vocab_size), d);  // head
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const int64_t m = c.ratio(i);
    double layer =
        fp8(ql, d) + fp8(H * hd, ql) + fp8(hd, d) + bf16(G * ol, H * hd / G) + fp8(d, G * ol);
    layer += 2 * 4 * (2 + hc) * hc * hc * d;  // mHC projections (F32)
    if (m > 0) layer += 2 * bf16((m == 4 ? 2 : 1) * hd, d);
    if (m == 4) layer += fp8(ih * ic, ql) + bf16(ih, d) + 2 * bf16(2 * ic, d);
    layer += bf16(E, d) + 3 * fp8(inter, d) + touched * expert;
    total += layer;
  }
  return total;
}

double KvBytesPerSequence(const ModelConfig& c, const KvLayout& layout, int64_t context) {
  double total = 0;
  const double main = static_cast<double>(layout.main_entry_bytes());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const int64_t m = c.ratio(i);
    total += static_cast<double>(std::min(context, c.sliding_window)) * main;
    if (m == 128) total += static_cast<double>(context / 128) * main;
    if (m == 4) {
      const double visible = static_cast<double>(context / 4);
      total += visible * static_cast<double>(layout.indexer_entry_bytes()) +
               std::min(visible, static_cast<double>(c.index_topk)) * main;
    }
  }
  return total;
}

// Gives `cache` `context` tokens of valid, random KV (entries encoded exactly as the model
// writes them) without running the prefill: decode cost depends on how much it reads, not on
// what the values are.
absl::Status FillSyntheticContext(const ModelConfig& c, const KvLayout& layout,
                                  engine::Backend& backend, engine::KvPool& pool,
                                  engine::SequenceCache& cache, int64_t context, uint64_t seed) {
  // Built on the host, then copied into the pool and the state slot (backend memory).
  std::vector<uint8_t> block(static_cast<size_t>(layout.block_bytes()));
  std::vector<uint8_t> state(static_cast<size_t>(layout.state_bytes()), 0);
  engine::MainEntryCodec main{c.nope_dim(), c.qk_rope_head_dim, layout.main_entry_bytes()};
  engine::IndexerEntryCodec index{c.index_head_dim, layout.indexer_entry_bytes()};
  std::vector<float> v(static_cast<size_t>(std::max(c.head_dim, c.index_head_dim)));
  uint64_t s = seed;
  auto fill = [&](int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      v[static_cast<size_t>(i)] =
          engine::RoundToBf16(static_cast<float>(static_cast<int64_t>(s >> 40) - (1 << 23)) /
                              static_cast<float>(1 << 23));
    }
  };
  for (int64_t b = 0; b < layout.BlocksFor(context); ++b) {
    STRATA_ASSIGN_OR_RETURN(int32_t id, pool.Allocate());
    cache.blocks.push_back(id);
    for (const engine::LayerKvLayout& l : layout.layers()) {
      for (int64_t e = 0; e < l.main_entries; ++e) {
        fill(c.head_dim);
        main.Encode(v.data(), block.data() + l.main_offset + e * main.bytes);
      }
      for (int64_t e = 0; e < l.indexer_entries; ++e) {
        fill(c.index_head_dim);
        index.Encode(v.data(), block.data() + l.indexer_offset + e * index.bytes);
      }
    }
    backend.ToDevice(pool.block(id), block.data(), layout.block_bytes());
  }
  for (const engine::LayerKvLayout& l : layout.layers()) {
    for (int64_t e = 0; e < c.sliding_window; ++e) {
      fill(c.head_dim);
      main.Encode(v.data(), state.data() + l.window_offset + e * main.bytes);
    }
  }
  backend.ToDevice(cache.state_data(), state.data(), layout.state_bytes());
  cache.position = context;
  return absl::OkStatus();
}

struct Bench {
  const EngineBenchOptions& options;
  double bandwidth;
};

// Device-to-device copy bandwidth (bytes read + written per second) of a backend whose memory is
// not host memory: 1 GiB copied, best of 3, timed by a host clock around a synchronising read.
double MeasureDeviceBandwidth(engine::Backend& backend) {
  const int64_t bytes = int64_t{1} << 30;
  auto a = engine::DeviceBuffer::Allocate(backend, bytes),
       b = engine::DeviceBuffer::Allocate(backend, bytes);
  if (!a.ok() || !b.ok()) return 0;
  backend.Zero(a->get(), bytes);
  float sync = 0;
  double best = 0;
  for (int i = 0; i < 4; ++i) {
    backend.ToHost(&sync, b->get(), 4);
    const auto start = Clock::now();
    backend.Copy(b->get(), a->get(), bytes);
    backend.ToHost(&sync, b->get(), 4);
    if (i > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / Seconds(start));
  }
  return best;
}

absl::StatusOr<std::unique_ptr<engine::Backend>> MakeBenchBackend(const EngineBenchOptions& o) {
  if (o.make_backend) return o.make_backend();
  return engine::MakeCpuBackend(o.threads);
}

// The bandwidth the roofline divides by: host memory measured now (this shared host drifts), or
// the device's copy bandwidth.
double CaseBandwidth(const Bench& bench, engine::Backend& backend) {
  if (!backend.host_memory()) return bench.bandwidth;
  return MeasureMemoryBandwidth(bench.options.threads, size_t{256} << 20);
}

// The preset as the cache and the results name it: "flash-2l-attn" for a variant.
std::string PresetName(const EngineBenchOptions& o, const std::string& preset) {
  std::string name = preset;
  if (o.layers > 0) absl::StrAppend(&name, "-", o.layers, "l");
  if (!o.variant.empty()) absl::StrAppend(&name, "-", o.variant);
  return name;
}

absl::StatusOr<std::string> EnsureModel(const EngineBenchOptions& o, const std::string& preset) {
  const std::string dir = absl::StrCat(o.model_cache, "/", PresetName(o, preset));
  if (std::filesystem::exists(dir + "/config.json")) return dir;
  std::fprintf(stderr, "making the %s bench model in %s (once)\n", preset.c_str(), dir.c_str());
  STRATA_ASSIGN_OR_RETURN(ModelConfig config, engine::PresetConfig(preset, o.layers));
  if (o.edit_config) o.edit_config(config);
  STRATA_RETURN_IF_ERROR(engine::WriteRandomModel(
      config, {.out_dir = dir, .seed = 1, .tokenizer_dir = o.tokenizer_dir}));
  return dir;
}

absl::Status BenchPreset(const Bench& bench, const std::string& preset) {
  const EngineBenchOptions& o = bench.options;
  STRATA_ASSIGN_OR_RETURN(std::string dir, EnsureModel(o, preset));
  STRATA_ASSIGN_OR_RETURN(auto ckpt, engine::Checkpoint::Load(dir, {.threads = o.threads}));
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<engine::Backend> measured, MakeBenchBackend(o));
  // With --profile-ops everything (weights, experts, KV pool, model) runs on the profiler, which
  // forwards to the measured backend; without it the profiler is not in the path at all.
  std::unique_ptr<engine::ProfilingBackend> profiler;
  if (o.profile_ops) profiler = std::make_unique<engine::ProfilingBackend>(*measured);
  engine::Backend* backend = profiler ? profiler.get() : measured.get();
  STRATA_ASSIGN_OR_RETURN(auto weights, engine::ModelWeights::Create(*ckpt, *backend));
  const ModelConfig& c = weights->config();
  engine::LocalExperts experts(*weights, *backend);
  KvLayout layout(c);
  std::vector<int64_t> contexts = o.contexts;
  // "At 1M context": as deep as the model's positions allow with room for the timed steps.
  const int64_t long_context = std::min(o.long_context, c.max_position_embeddings - o.steps - 2);
  if (preset == "tiny" && o.long_context > 0) contexts.push_back(long_context);
  int64_t max_blocks = 0;
  for (int64_t b : o.batches) {
    for (int64_t ctx : o.contexts)
      max_blocks = std::max(max_blocks, b * (layout.BlocksFor(ctx + o.steps) + 1));
  }
  max_blocks = std::max(max_blocks, layout.BlocksFor(long_context + o.steps) + 1);
  max_blocks = std::max(max_blocks, layout.BlocksFor(o.prefill_tokens) + 1);
  engine::KvPool pool(layout, max_blocks, backend);
  engine::Model model(*weights, *backend, experts, pool);

  // Decode: `batch` sequences at `context` tokens, `steps` steps of one token each.
  for (int64_t context : contexts) {
    for (int64_t batch : o.batches) {
      if (context == long_context && batch != 1) continue;
      if (o.max_batch_tokens > 0 && batch * context > o.max_batch_tokens) continue;
      std::vector<engine::SequenceCache> caches;
      for (int64_t s = 0; s < batch; ++s) {
        caches.push_back(model.NewSequence());
        STRATA_RETURN_IF_ERROR(FillSyntheticContext(c, layout, *backend, pool, caches.back(),
                                                    context, 7 + static_cast<uint64_t>(s)));
      }
      std::vector<int32_t> tokens(static_cast<size_t>(batch), 1000);
      std::vector<float> logits;
      auto step = [&] {
        std::vector<engine::StepInput> inputs;
        for (int64_t s = 0; s < batch; ++s) {
          inputs.push_back({&caches[static_cast<size_t>(s)],
                            absl::MakeConstSpan(&tokens[static_cast<size_t>(s)], 1), true});
        }
        logits.clear();
        return model.Step(inputs, &logits);
      };
      STRATA_RETURN_IF_ERROR(step());  // warm-up
      // This machine's bandwidth drifts (shared hosts, CPU quotas): the roofline uses the
      // bandwidth measured right before the case, not the one at the start of the run.
      const double bandwidth = CaseBandwidth(bench, *backend);
      if (profiler) profiler->Reset();
      auto start = Clock::now();
      for (int64_t i = 0; i < o.steps; ++i) STRATA_RETURN_IF_ERROR(step());
      const double seconds = Seconds(start);
      const double tok_s = static_cast<double>(batch * o.steps) / seconds;
      const double bytes = WeightBytesPerStep(c, batch) +
                           static_cast<double>(batch) * KvBytesPerSequence(c, layout, context);
      const double roofline = static_cast<double>(batch) * bandwidth / bytes;
      std::printf(
          "  decode %s batch %lld context %lld: %.1f MB read per step at %.1f GB/s, roofline %.1f "
          "tok/s\n",
          preset.c_str(), static_cast<long long>(batch), static_cast<long long>(context),
          bytes / 1e6, bandwidth / 1e9, roofline);
      // The target: at least half the memory-bandwidth roofline.
      Report({absl::StrCat("decode_", PresetName(o, preset), "_b", batch, "_ctx", context), tok_s,
              "tok/s", 0.5 * roofline},
             profiler ? "" : o.results);  // profiled figures are printed, not recorded
      if (profiler) std::printf("%s", profiler->Report(seconds).c_str());
      for (auto& cache : caches) model.Release(cache);
    }
  }

  // Prefill: one sequence of prefill_tokens in chunks of 2048, from an empty cache.
  if (o.prefill_tokens > 0) {
    std::vector<int32_t> prompt(static_cast<size_t>(o.prefill_tokens));
    for (size_t i = 0; i < prompt.size(); ++i)
      prompt[i] = static_cast<int32_t>(1000 + (i * 7919) % 100000);
    engine::SequenceCache cache = model.NewSequence();
    std::vector<float> logits;
    auto start = Clock::now();
    for (size_t at = 0; at < prompt.size(); at += 2048) {
      const size_t n = std::min<size_t>(2048, prompt.size() - at);
      STRATA_RETURN_IF_ERROR(
          model.Step({engine::StepInput{&cache, absl::MakeConstSpan(prompt).subspan(at, n),
                                        at + n == prompt.size()}},
                     &logits));
    }
    const double tok_s = static_cast<double>(prompt.size()) / Seconds(start);
    // Roofline for prefill: weights read once per 2048-token chunk (compute bound in practice).
    const double chunks = std::ceil(static_cast<double>(prompt.size()) / 2048);
    const double roofline = static_cast<double>(prompt.size()) * bench.bandwidth /
                            (chunks * WeightBytesPerStep(c, 2048));
    // Prefill is compute-bound: the memory roofline is only an upper bound, shown for scale.
    std::printf("  prefill %s %lld tokens: memory roofline %.0f tok/s (compute-bound; no target)\n",
                preset.c_str(), static_cast<long long>(o.prefill_tokens), roofline);
    Report({absl::StrCat("prefill_", PresetName(o, preset), "_", o.prefill_tokens), tok_s, "tok/s",
            roofline},
           o.results);
    model.Release(cache);
  }
  return absl::OkStatus();
}

}  // namespace

double MeasureMemoryBandwidth(int threads, size_t n) {  // n: bytes streamed
  std::vector<uint64_t> buffer(n / 8, 1);
  ThreadPool pool(static_cast<size_t>(std::max(threads, 0)));
  const size_t parts = pool.num_threads() * 4;
  std::atomic<uint64_t> sink{0};
  auto pass = [&] {
    pool.ParallelFor(parts, [&](size_t p) {
      const size_t begin = buffer.size() * p / parts, end = buffer.size() * (p + 1) / parts;
      // Eight independent sums so the loop streams (vectorised) rather than waiting on one add.
      uint64_t acc[8] = {};
      size_t i = begin;
      for (; i + 8 <= end; i += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += buffer[i + j];
      }
      for (; i < end; ++i) acc[0] += buffer[i];
      uint64_t sum = 0;
      for (uint64_t a : acc) sum += a;
      sink += sum;
    });
  };
  pass();
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    auto start = Clock::now();
    pass();
    best = std::max(best, static_cast<double>(buffer.size() * 8) / Seconds(start));
  }
  return best;
}

absl::Status RunEngineBench(const EngineBenchOptions& options) {
  double bandwidth = 0;
  if (options.make_backend) {
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<engine::Backend> backend, options.make_backend());
    bandwidth = MeasureDeviceBandwidth(*backend);
    std::printf("%s device bandwidth (copy, read + write): %.1f GB/s\n",
                std::string(backend->name()).c_str(), bandwidth / 1e9);
  } else {
    bandwidth = MeasureMemoryBandwidth(options.threads, size_t{1} << 30);
    std::printf("memory bandwidth (streaming read): %.1f GB/s\n", bandwidth / 1e9);
  }
  Bench bench{options, bandwidth};
  for (const std::string& preset : options.presets)
    STRATA_RETURN_IF_ERROR(BenchPreset(bench, preset));
  return absl::OkStatus();
}

}  // namespace strata::bench
