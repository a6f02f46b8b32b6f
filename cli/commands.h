// Subcommands of the `strata` binary. Each Add*Command registers its flags on `app` and sets the
// callback that runs it; the callback stores the process exit code in `*exit_code`.
#pragma once

#include <string>

#include "CLI/CLI.hpp"

namespace strata::cli {

// Where tokenizer files come from when a command needs them and no model folder has them:
// $STRATA_TOKENIZER_DIR, else the folder the build was configured with (make tokenizer).
std::string DefaultTokenizerDir();

// Prints "strata <command>: <message>" to stderr and returns 1 (the exit code for bad input).
int Fail(const std::string& command, const std::string& message);

void AddMkmodelCommand(CLI::App& app, int* exit_code);
void AddInspectCommand(CLI::App& app, int* exit_code);
void AddTokenizeCommands(CLI::App& app, int* exit_code);
void AddKvSizeCommand(CLI::App& app, int* exit_code);
void AddGenerateCommand(CLI::App& app, int* exit_code);
void AddBenchCommand(CLI::App& app, int* exit_code);
void AddWorkerCommands(CLI::App& app, int* exit_code);   // prefill, decode
void AddRouterCommands(CLI::App& app, int* exit_code);   // router, serve --colocated
void AddKvStoreCommand(CLI::App& app, int* exit_code);   // kvstore (cli/kvstore_cmd.cc)
// strata up: the whole cluster on this machine (cli/up.cc).
void AddUpCommand(CLI::App& app, int* exit_code);
void AddChatCommand(CLI::App& app, int* exit_code);  // strata chat: streaming client (cli/chat.cc)

}  // namespace strata::cli
