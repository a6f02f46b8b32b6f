// strata inspect: load and validate a checkpoint, then describe it.
#include <chrono>
#include <cstdio>
#include <map>

#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "common/progress.h"
#include "engine/checkpoint.h"

namespace strata::cli {

void AddInspectCommand(CLI::App& app, int* exit_code) {
  struct Flags {
    std::string model;
    int threads = 0;
    bool no_verify = false;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Load a checkpoint the way the engine does (every tensor checked against config.json, scales and hash "
      "tables verified, pages loaded in parallel) and print what it holds.");
  cmd->add_option("--model", flags->model, "model folder")->required();
  cmd->add_option("--threads", flags->threads, "loader threads (default: all cores)");
  cmd->add_flag("--no-verify", flags->no_verify, "skip the value checks (structure is always checked)");
  cmd->callback([flags, exit_code] {
    auto start = std::chrono::steady_clock::now();
    auto ckpt = engine::Checkpoint::Load(
        flags->model, {.verify_values = !flags->no_verify, .prefault = true, .threads = flags->threads});
    if (!ckpt.ok()) {
      *exit_code = Fail("inspect", std::string(ckpt.status().message()));
      return;
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const engine::ModelConfig& c = (*ckpt)->config();
    std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // dtype -> (tensors, bytes)
    double params = 0;
    for (const std::string& name : (*ckpt)->store().Names()) {
      engine::TensorView v = (*ckpt)->store().Find(name);
      auto& [count, bytes] = by_dtype[std::string(engine::DTypeName(v.info->dtype))];
      ++count;
      bytes += v.info->nbytes;
      if (name.ends_with(".scale") && (v.info->dtype == engine::DType::kF8_E8M0)) continue;
      // Packed FP4 experts hold two weights per byte.
      double n = static_cast<double>(engine::NumElements(v.info->shape));
      params += name.find(".experts.") != std::string::npos && name.ends_with(".weight") ? 2 * n : n;
    }
    std::printf("model      %s\n", flags->model.c_str());
    std::printf("layers     %lld (+%lld MTP), ratios [%s]\n", static_cast<long long>(c.num_hidden_layers),
                static_cast<long long>(c.num_nextn_predict_layers), absl::StrJoin(c.compress_ratios, ",").c_str());
    std::printf("width      d=%lld, %lld heads x %lld (rope %lld), q_lora %lld, o %lldx%lld\n",
                static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_attention_heads),
                static_cast<long long>(c.head_dim), static_cast<long long>(c.qk_rope_head_dim),
                static_cast<long long>(c.q_lora_rank), static_cast<long long>(c.o_groups),
                static_cast<long long>(c.o_lora_rank));
    std::printf("experts    %lld routed (top-%lld, %lld hash layers) + %lld shared, inter %lld\n",
                static_cast<long long>(c.n_routed_experts), static_cast<long long>(c.num_experts_per_tok),
                static_cast<long long>(c.num_hash_layers), static_cast<long long>(c.n_shared_experts),
                static_cast<long long>(c.moe_intermediate_size));
    std::printf("indexer    %lld heads x %lld, top-%lld; window %lld\n", static_cast<long long>(c.index_n_heads),
                static_cast<long long>(c.index_head_dim), static_cast<long long>(c.index_topk),
                static_cast<long long>(c.sliding_window));
    std::printf("vocab      %lld\n", static_cast<long long>(c.vocab_size));
    const bool billions = params >= 1e9;
    std::printf("tensors    %zu in %zu shards, %.3g%s parameters, %s\n", (*ckpt)->num_tensors(),
                (*ckpt)->store().files().size(), billions ? params / 1e9 : params / 1e6, billions ? "B" : "M",
                HumanBytes(static_cast<double>((*ckpt)->total_bytes())).c_str());
    for (const auto& [dtype, cb] : by_dtype) {
      std::printf("  %-8s %6llu tensors %12s\n", dtype.c_str(), static_cast<unsigned long long>(cb.first),
                  HumanBytes(static_cast<double>(cb.second)).c_str());
    }
    std::printf("loaded and verified in %.2f s (%s/s)\n", seconds,
                HumanBytes(static_cast<double>((*ckpt)->total_bytes()) / seconds).c_str());
  });
}

}  // namespace strata::cli
