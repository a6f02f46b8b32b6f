// strata tokenize / detokenize: the model's tokenizer from the command line.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "common/file.h"
#include "engine/tokenizer.h"

namespace strata::cli {
namespace {

struct Flags {
  std::string model, text, file, ids;
  bool chat = false;
  std::string system;
};

// The text to work on: --text, --file (- for stdin), or stdin.
absl::StatusOr<std::string> InputText(const std::string& text, const std::string& file, bool text_given) {
  if (text_given) return text;
  if (!file.empty() && file != "-") return ReadFile(file);
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

}  // namespace

void AddTokenizeCommands(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<Flags>();
  CLI::App* tok = app.add_subcommand(
      "tokenize", "Print the token ids of a text (one line, space-separated), as the model's tokenizer encodes it.");
  tok->add_option("--model", flags->model, "model folder (holds tokenizer.json and tokenizer_config.json)")
      ->required();
  CLI::Option* text_opt = tok->add_option("--text", flags->text, "the text");
  CLI::Option* file_opt = tok->add_option("--file", flags->file, "read the text from a file (- for stdin)");
  text_opt->excludes(file_opt);
  tok->add_flag("--chat", flags->chat,
                "wrap the text as a user turn in DeepSeek's chat format (BOS, <｜User｜>…<｜Assistant｜>), as "
                "the router encodes a chat: control-token text in the message stays text");
  tok->add_option("--system", flags->system, "with --chat: a system prompt");
  tok->callback([flags, exit_code, text_opt] {
    auto tokenizer = engine::Tokenizer::Load(flags->model);
    if (!tokenizer.ok()) {
      *exit_code = Fail("tokenize", std::string(tokenizer.status().message()));
      return;
    }
    absl::StatusOr<std::string> text = InputText(flags->text, flags->file, text_opt->count() > 0);
    if (!text.ok()) {
      *exit_code = Fail("tokenize", std::string(text.status().message()));
      return;
    }
    std::vector<int32_t> ids;
    if (flags->chat) {
      // As the router encodes a chat: the text is a message's content, so control-token text in
      // it stays text.
      std::vector<engine::ChatMessage> messages;
      if (!flags->system.empty()) messages.push_back({"system", flags->system});
      messages.push_back({"user", *text});
      absl::StatusOr<std::vector<int32_t>> chat_ids =
          (*tokenizer)->EncodeChat(messages, /*add_generation_prompt=*/true);
      if (!chat_ids.ok()) {
        *exit_code = Fail("tokenize", std::string(chat_ids.status().message()));
        return;
      }
      ids = *std::move(chat_ids);
    } else {
      ids = (*tokenizer)->Encode(*text);
    }
    std::printf("%s\n", absl::StrJoin(ids, " ").c_str());
  });

  CLI::App* detok = app.add_subcommand("detokenize", "Print the text of token ids (the reverse of tokenize).");
  detok->add_option("--model", flags->model, "model folder (holds tokenizer.json)")->required();
  CLI::Option* ids_opt = detok->add_option("--ids", flags->ids, "the ids, separated by spaces or commas");
  CLI::Option* dfile_opt = detok->add_option("--file", flags->file, "read the ids from a file (- for stdin)");
  ids_opt->excludes(dfile_opt);
  detok->callback([flags, exit_code, ids_opt] {
    auto tokenizer = engine::Tokenizer::Load(flags->model);
    if (!tokenizer.ok()) {
      *exit_code = Fail("detokenize", std::string(tokenizer.status().message()));
      return;
    }
    absl::StatusOr<std::string> input = InputText(flags->ids, flags->file, ids_opt->count() > 0);
    if (!input.ok()) {
      *exit_code = Fail("detokenize", std::string(input.status().message()));
      return;
    }
    std::vector<int32_t> ids;
    for (absl::string_view piece : absl::StrSplit(*input, absl::ByAnyChar(" ,\t\r\n"), absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(piece, &id)) {
        *exit_code = Fail("detokenize", "'" + std::string(piece) + "' is not a token id");
        return;
      }
      ids.push_back(id);
    }
    absl::StatusOr<std::string> text = (*tokenizer)->Decode(ids);
    if (!text.ok()) {
      *exit_code = Fail("detokenize", std::string(text.status().message()));
      return;
    }
    std::fwrite(text->data(), 1, text->size(), stdout);
    std::fputc('\n', stdout);
  });
}

}  // namespace strata::cli
