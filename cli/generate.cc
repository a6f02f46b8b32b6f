// strata generate: one prompt through the whole model on this machine, streaming the answer.
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "common/file.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "engine/experts.h"
#include "engine/kv/kv_cache.h"
#include "engine/model.h"
#include "engine/model_weights.h"
#include "engine/runtime.h"
#include "engine/npy.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

namespace strata::cli {
namespace {

enum class PromptKind { kText, kFile, kChat, kIds };

struct Flags {
  PromptKind kind = PromptKind::kText;
  std::string model, prompt, prompt_file, chat, prompt_ids, backend = "cpu", dump_logits, dump_layers, system;
  int64_t max_tokens = 64, chunk = 512;
  int threads = 0;
  float temperature = 0.0f, top_p = 1.0f;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false;
};

using Clock = std::chrono::steady_clock;

absl::Status Run(const Flags& f) {
  auto start = Clock::now();
  STRATA_ASSIGN_OR_RETURN(auto runtime, engine::LoadRuntime(f.model, {.threads = f.threads, .backend = f.backend}));
  STRATA_ASSIGN_OR_RETURN(auto tokenizer, engine::Tokenizer::Load(f.model));
  const engine::ModelConfig& config = runtime->config();

  std::vector<int32_t> prompt;
  if (f.kind == PromptKind::kIds) {
    // "@FILE": a prompt too long for one argument (Linux caps one at 128 KiB, ~20K ids).
    std::string ids = f.prompt_ids;
    if (absl::StartsWith(ids, "@")) {
      STRATA_ASSIGN_OR_RETURN(ids, ReadFile(ids.substr(1)));
    }
    for (absl::string_view piece : absl::StrSplit(ids, absl::ByAnyChar(" ,\t\n"), absl::SkipEmpty())) {
      int32_t id;
      if (!absl::SimpleAtoi(piece, &id)) return absl::InvalidArgumentError(absl::StrCat("--prompt-ids: '", piece, "' is not a token id"));
      prompt.push_back(id);
    }
  } else if (f.kind == PromptKind::kChat) {
    std::vector<engine::ChatMessage> messages;
    if (!f.system.empty()) messages.push_back({"system", f.system});
    messages.push_back({"user", f.chat});
    // As the router encodes a chat: control-token text in the message stays text.
    STRATA_ASSIGN_OR_RETURN(prompt, tokenizer->EncodeChat(messages, true));
  } else {
    std::string text = f.prompt;
    if (f.kind == PromptKind::kFile) {
      STRATA_ASSIGN_OR_RETURN(text, ReadFile(f.prompt_file));
    }
    prompt = tokenizer->Encode(text);
    prompt.insert(prompt.begin(), tokenizer->bos_id());
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (static_cast<int64_t>(prompt.size()) + f.max_tokens > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", prompt.size(), " tokens) + --max-tokens (", f.max_tokens,
                                                   ") exceeds the model's context of ", config.max_position_embeddings));
  }

  engine::KvLayout layout(config);
  engine::KvPool pool(layout, layout.BlocksFor(static_cast<int64_t>(prompt.size()) + f.max_tokens) + 1,
                      runtime->backend.get());
  engine::Model model(*runtime->weights, *runtime->backend, *runtime->experts, pool);
  engine::SequenceCache cache = model.NewSequence();
  const double load_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  std::FILE* logits_file = nullptr;
  if (!f.dump_logits.empty()) {
    logits_file = std::fopen(f.dump_logits.c_str(), "wb");
    if (logits_file == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot write ", f.dump_logits));
  }
  auto dump = [&](const std::vector<float>& row) {
    if (logits_file != nullptr) std::fwrite(row.data(), sizeof(float), row.size(), logits_file);
  };

  // --dump-layers: the residual streams entering each layer, for the whole prompt.
  std::vector<std::vector<float>> layer_streams;
  const int64_t row_floats = config.hc_mult * config.hidden_size;
  if (!f.dump_layers.empty()) layer_streams.resize(static_cast<size_t>(config.num_hidden_layers + 1));
  engine::LayerObserver observer;
  if (!f.dump_layers.empty()) {
    observer = [&](int64_t layer, const float* streams, int64_t rows) {
      auto& dst = layer_streams[static_cast<size_t>(layer)];
      const size_t at = dst.size();
      dst.resize(at + static_cast<size_t>(rows * row_floats));
      model.backend().ToHost(dst.data() + at, streams, rows * row_floats * 4);
    };
  }

  // Prefill in chunks, then decode one token per step.
  auto prefill_start = Clock::now();
  std::vector<float> logits;
  for (size_t at = 0; at < prompt.size(); at += static_cast<size_t>(f.chunk)) {
    const size_t n = std::min(prompt.size() - at, static_cast<size_t>(f.chunk));
    engine::StepInput in{&cache, absl::MakeConstSpan(prompt).subspan(at, n), at + n == prompt.size()};
    STRATA_RETURN_IF_ERROR(model.Step({in}, &logits, observer));
  }
  if (!f.dump_layers.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(f.dump_layers, ec);
    std::vector<int64_t> ids(prompt.begin(), prompt.end());
    const int64_t T = static_cast<int64_t>(prompt.size());
    STRATA_RETURN_IF_ERROR(engine::WriteNpyI64(f.dump_layers + "/ids.npy", {T}, ids.data()));
    for (size_t l = 0; l < layer_streams.size(); ++l) {
      STRATA_RETURN_IF_ERROR(engine::WriteNpyF32(absl::StrCat(f.dump_layers, "/X", l, ".npy"),
                                                 {T, config.hc_mult, config.hidden_size}, layer_streams[l].data()));
    }
  }
  engine::Sampler sampler({.temperature = f.temperature, .top_k = f.top_k, .top_p = f.top_p, .seed = f.seed},
                          tokenizer->num_tokens());
  engine::IncrementalDecoder decoder(*tokenizer);
  engine::StopMatcher stops(f.stop);
  double ttft = 0;
  int64_t generated = 0;
  auto decode_start = Clock::now();
  for (;;) {
    dump(logits);
    const int32_t next = sampler.Sample(logits.data());
    if (generated == 0) {
      ttft = std::chrono::duration<double>(Clock::now() - prefill_start).count();
      decode_start = Clock::now();
    }
    ++generated;
    if (next == tokenizer->eos_id() && !f.ignore_eos) break;
    std::string text = stops.Push(decoder.Push(next));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    if (stops.stopped() || generated >= f.max_tokens) break;
    logits.clear();
    const int32_t one[] = {next};
    STRATA_RETURN_IF_ERROR(model.Step({engine::StepInput{&cache, one, true}}, &logits));
  }
  std::string rest = stops.Push(decoder.Flush());
  rest += stops.Flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (logits_file != nullptr) std::fclose(logits_file);
  const double decode_seconds = std::chrono::duration<double>(Clock::now() - decode_start).count();
  std::fprintf(stderr,
               "prompt %zu tokens, generated %lld; load %.2f s, TTFT %.3f s (prefill %.1f tok/s), decode %.2f tok/s\n",
               prompt.size(), static_cast<long long>(generated), load_seconds, ttft,
               static_cast<double>(prompt.size()) / ttft,
               generated > 1 ? static_cast<double>(generated - 1) / decode_seconds : 0.0);
  model.Release(cache);
  return absl::OkStatus();
}

}  // namespace

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Run a prompt through the whole model on this machine and stream the answer; prompt tokens, TTFT "
                  "and tokens/s go to stderr.");
  cmd->add_option("--model", f->model, "model folder")->required();
  auto* p = cmd->add_option("--prompt", f->prompt, "prompt text (BOS is added)");
  auto* pf = cmd->add_option("--prompt-file", f->prompt_file, "read the prompt text from a file (BOS is added)");
  auto* c = cmd->add_option("--chat", f->chat, "a user message, wrapped in DeepSeek's chat format");
  auto* ids = cmd->add_option("--prompt-ids", f->prompt_ids, "token ids, fed exactly as given (@FILE: read from FILE)");
  p->excludes(c)->excludes(ids)->excludes(pf);
  c->excludes(ids)->excludes(pf);
  ids->excludes(pf);
  cmd->add_option("--system", f->system, "with --chat: a system prompt");
  cmd->add_option("--max-tokens", f->max_tokens, "tokens to generate at most")->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--temperature", f->temperature, "0 = greedy")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", f->top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
  cmd->add_option("--top-p", f->top_p, "nucleus sampling mass")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", f->seed, "random seed for sampling")->capture_default_str();
  cmd->add_option("--stop", f->stop, "stop sequence (repeatable); not included in the output");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "keep generating past the end-of-sequence token");
  cmd->add_option("--backend", f->backend, "cpu (cuda when built with it)")->capture_default_str();
  cmd->add_option("--threads", f->threads, "worker threads (default: all cores)");
  cmd->add_option("--chunk", f->chunk, "prefill chunk size in tokens")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--dump-logits", f->dump_logits,
                  "write each step's final-position logits as little-endian float32 rows (prompt's last position first)");
  cmd->add_option("--dump-layers", f->dump_layers,
                  "write ids.npy and X0.npy … X{L}.npy: the residual streams entering each layer for the prompt");
  cmd->callback([f, exit_code, p, pf, c, ids] {
    if (p->count() + pf->count() + c->count() + ids->count() != 1) {
      *exit_code = Fail("generate", "give one of --prompt, --prompt-file, --chat or --prompt-ids");
      return;
    }
    f->kind = ids->count() > 0  ? PromptKind::kIds
              : c->count() > 0  ? PromptKind::kChat
              : pf->count() > 0 ? PromptKind::kFile
                                : PromptKind::kText;
    absl::Status status = Run(*f);
    if (!status.ok()) *exit_code = Fail("generate", std::string(status.message()));
  });
}

}  // namespace strata::cli
