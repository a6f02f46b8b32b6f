// The `strata` command: one subcommand per role and tool (DESIGN.md §7).
#include <cstdio>
#include <cstdlib>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "cli/commands.h"
#include "common/logging.h"

namespace strata::cli {

std::string DefaultTokenizerDir() {
  if (const char* env = std::getenv("STRATA_TOKENIZER_DIR"); env != nullptr && *env != '\0') return env;
  return STRATA_DEFAULT_TOKENIZER_DIR;
}

int Fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "strata %s: %s\n", command.c_str(), message.c_str());
  return 1;
}

}  // namespace strata::cli

int main(int argc, char** argv) {
  // Debian's Abseil checks every lock for deadlock cycles (debug bookkeeping on each Lock); the
  // services take many locks per transfer and token, so turn it off.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"Strata: a disaggregated serving cluster for DeepSeek-V4-class models.\n"
               "Run `strata <command> --help` for a command's flags."};
  app.require_subcommand(1);
  app.fallthrough();
  std::string log_level = "info", log_format = "text";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  app.add_option("--log-format", log_format, "text, or json for one JSON object per line")->capture_default_str();
  app.parse_complete_callback([&] {
    auto format = strata::ParseLogFormat(log_format);
    absl::Status status = format.ok() ? strata::InitLogging({.level = log_level, .format = *format})
                                      : format.status();
    if (!status.ok()) throw CLI::ValidationError("--log-level/--log-format", std::string(status.message()));
  });

  int exit_code = 0;
  strata::cli::AddMkmodelCommand(app, &exit_code);
  strata::cli::AddInspectCommand(app, &exit_code);
  strata::cli::AddTokenizeCommands(app, &exit_code);
  strata::cli::AddKvSizeCommand(app, &exit_code);
  strata::cli::AddGenerateCommand(app, &exit_code);
  strata::cli::AddBenchCommand(app, &exit_code);
  strata::cli::AddWorkerCommands(app, &exit_code);
  strata::cli::AddRouterCommands(app, &exit_code);
  strata::cli::AddKvStoreCommand(app, &exit_code);
  strata::cli::AddUpCommand(app, &exit_code);
  strata::cli::AddChatCommand(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
