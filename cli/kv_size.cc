// strata kv-size: the KV cache this model needs for a context, next to DeepSeek-V3.2's.
#include <cstdio>

#include "cli/commands.h"
#include "common/progress.h"
#include "engine/kv/kv_layout.h"
#include "engine/model_config.h"

namespace strata::cli {

void AddKvSizeCommand(CLI::App& app, int* exit_code) {
  struct Flags {
    std::string model, preset;
    int64_t context = 0;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand(
      "kv-size",
      "Print the KV cache bytes per token and for a whole context (computed by the allocator's own layout code), "
      "next to DeepSeek-V3.2's MLA cache; the last line is the ratio. Reads only config.json.");
  CLI::Option* model = cmd->add_option("--model", flags->model, "model folder (its config.json)");
  CLI::Option* preset = cmd->add_option("--preset", flags->preset, "tiny, small, flash or pro instead of a model")
                            ->check(CLI::IsMember({"tiny", "small", "flash", "pro"}));
  model->excludes(preset);
  cmd->add_option("--context", flags->context, "context length in tokens")->required()->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->callback([flags, exit_code, model, preset] {
    if (model->count() + preset->count() != 1) {
      *exit_code = Fail("kv-size", "give --model DIR or --preset NAME");
      return;
    }
    absl::StatusOr<engine::ModelConfig> config = model->count() > 0
                                                     ? engine::ModelConfig::Load(flags->model + "/config.json")
                                                     : engine::PresetConfig(flags->preset);
    if (!config.ok()) {
      *exit_code = Fail("kv-size", std::string(config.status().message()));
      return;
    }
    engine::KvLayout layout(*config);
    const int64_t n = flags->context;
    const double ours = static_cast<double>(layout.BytesForContext(n));
    const double v32 = static_cast<double>(engine::V32BytesForContext(n));
    int csa = 0, hca = 0, swa = 0;
    for (const auto& l : layout.layers()) (l.ratio == 4 ? csa : l.ratio == 128 ? hca : swa)++;
    std::printf("model            %s (%d CSA, %d HCA, %d window-only layers)\n",
                model->count() > 0 ? flags->model.c_str() : flags->preset.c_str(), csa, hca, swa);
    std::printf("entries          main %lld B, indexer %lld B; block of %lld tokens %lld B; state slot %s\n",
                static_cast<long long>(layout.main_entry_bytes()), static_cast<long long>(layout.indexer_entry_bytes()),
                static_cast<long long>(engine::kBlockTokens), static_cast<long long>(layout.block_bytes()),
                HumanBytes(static_cast<double>(layout.state_bytes())).c_str());
    std::printf("this model       %10.2f B/token   %14.0f B (%s) at %lld tokens\n", layout.bytes_per_token(), ours,
                HumanBytes(ours).c_str(), static_cast<long long>(n));
    std::printf("DeepSeek-V3.2    %10.2f B/token   %14.0f B (%s) at %lld tokens\n",
                static_cast<double>(engine::kV32Layers * engine::kV32BytesPerTokenPerLayer), v32,
                HumanBytes(v32).c_str(), static_cast<long long>(n));
    std::printf("ratio            %.2f%%\n", 100.0 * ours / v32);
  });
}

}  // namespace strata::cli
