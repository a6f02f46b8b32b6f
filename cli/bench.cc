// strata bench: the benchmarks, each printing its figure, limit and ratio and recording the run
// in bench/results/.
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "bench/engine_bench.h"
#include "cli/commands.h"

namespace strata::cli {

void AddBenchCommand(CLI::App& app, int* exit_code) {
  CLI::App* bench = app.add_subcommand("bench", "Run a benchmark; figures are recorded in bench/results/.");
  bench->require_subcommand(1);
  auto o = std::make_shared<bench::EngineBenchOptions>();
  const char* home = std::getenv("HOME");
  o->model_cache = absl::StrCat(std::getenv("STRATA_CACHE") != nullptr ? std::getenv("STRATA_CACHE")
                                                                       : absl::StrCat(home != nullptr ? home : "/tmp", "/.cache/strata"),
                                "/bench-models");
  o->tokenizer_dir = DefaultTokenizerDir();
  CLI::App* engine = bench->add_subcommand(
      "engine", "CPU engine: decode tokens/s at several batches and contexts, prefill tokens/s, next to the "
                "memory-bandwidth roofline of this machine.");
  engine->add_option("--presets", o->presets, "model presets")->delimiter(',')->capture_default_str();
  engine->add_option("--batches", o->batches, "decode batch sizes")->delimiter(',')->capture_default_str();
  engine->add_option("--contexts", o->contexts, "decode context lengths")->delimiter(',')->capture_default_str();
  engine->add_option("--prefill-tokens", o->prefill_tokens, "prefill length")->capture_default_str();
  engine->add_option("--long-context", o->long_context, "decode context for the long-context case on tiny (0: skip)")
      ->capture_default_str();
  engine->add_option("--steps", o->steps, "decode steps timed per case")->capture_default_str();
  engine->add_option("--threads", o->threads, "worker threads (default: all cores)");
  engine->add_option("--model-cache", o->model_cache, "where the bench models are made (once)")->capture_default_str();
  engine->add_option("--tokenizer-dir", o->tokenizer_dir, "tokenizer files for making the bench models")
      ->capture_default_str();
  engine->callback([o, exit_code] {
    absl::Status status = bench::RunEngineBench(*o);
    if (!status.ok()) *exit_code = Fail("bench engine", std::string(status.message()));
  });
}

}  // namespace strata::cli
