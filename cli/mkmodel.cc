// strata mkmodel: a checkpoint of the official layout filled with seeded random weights.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "common/progress.h"
#include "engine/model_config.h"
#include "engine/model_writer.h"

namespace strata::cli {

void AddMkmodelCommand(CLI::App& app, int* exit_code) {
  struct Flags {
    std::string preset, out, tokenizer_dir;
    int64_t layers = 0;
    uint64_t seed = 0;
    uint64_t shard_mb = 0;
    int threads = 0;
  };
  auto flags = std::make_shared<Flags>();
  flags->tokenizer_dir = DefaultTokenizerDir();
  CLI::App* cmd = app.add_subcommand(
      "mkmodel",
      "Write a model in DeepSeek's checkpoint layout (config.json, sharded safetensors + index, tokenizer files) "
      "with seeded random weights. The same seed gives byte-identical files.");
  cmd->add_option("--preset", flags->preset, "tiny, small, flash or pro (MODEL.md §6)")
      ->required()
      ->check(CLI::IsMember({"tiny", "small", "flash", "pro"}));
  cmd->add_option("--out", flags->out, "output folder (created if missing)")->required();
  cmd->add_option("--layers", flags->layers, "keep only the first N layers (for single-layer benchmarks)");
  cmd->add_option("--seed", flags->seed, "random seed")->capture_default_str();
  cmd->add_option("--tokenizer-dir", flags->tokenizer_dir,
                  "folder with tokenizer.json and tokenizer_config.json (default: $STRATA_TOKENIZER_DIR or the one "
                  "`make tokenizer` fetched)")
      ->capture_default_str();
  cmd->add_option("--shard-mb", flags->shard_mb, "largest shard size in MiB (default: by model size)");
  cmd->add_option("--threads", flags->threads, "worker threads (default: all cores)");
  cmd->callback([flags, exit_code] {
    absl::StatusOr<engine::ModelConfig> config = engine::PresetConfig(flags->preset, flags->layers);
    if (!config.ok()) {
      *exit_code = Fail("mkmodel", std::string(config.status().message()));
      return;
    }
    auto start = std::chrono::steady_clock::now();
    absl::Status status = engine::WriteRandomModel(
        *config, {.out_dir = flags->out, .seed = flags->seed, .tokenizer_dir = flags->tokenizer_dir,
                  .shard_bytes = flags->shard_mb << 20, .threads = flags->threads});
    if (!status.ok()) {
      *exit_code = Fail("mkmodel", std::string(status.message()));
      return;
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("wrote %s model (%lld layers + %lld MTP) to %s in %.1f s\n", flags->preset.c_str(),
                static_cast<long long>(config->num_hidden_layers),
                static_cast<long long>(config->num_nextn_predict_layers), flags->out.c_str(), seconds);
  });
}

}  // namespace strata::cli
