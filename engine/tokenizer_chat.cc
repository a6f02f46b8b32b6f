// DeepSeek's chat format: a hand-written rendering of the chat_template in DeepSeek V3's
// tokenizer_config.json (a Jinja template), checked against the reference's Jinja rendering by
// the parity test. Tool calls (assistant messages without content) cannot be expressed by
// ChatMessage and are not rendered. RenderChat walks the format once, telling the template's
// markers from text; ApplyChatTemplate joins the pieces into the prompt's text, EncodeChat
// turns markers into ids and text into plain-text ids, so message content never becomes one.
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_added_tokens.h"
#include "engine/tokenizer_utf8.h"

namespace strata::engine {
namespace {

using internal_tokenizer::Cat;

// Literals of the template (it writes EOS as a literal too, not as {{eos_token}}).
constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";
constexpr std::string_view kToolOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kToolOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kToolOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kToolOutputEnd = "<｜tool▁output▁end｜>";

}  // namespace

absl::Status Tokenizer::RenderChat(
    absl::Span<const ChatMessage> messages, bool add_generation_prompt,
    absl::FunctionRef<void(std::string_view piece, bool marker)> emit) const {
  if (!deepseek_chat_template_) {
    return absl::FailedPreconditionError(
        "this tokenizer's tokenizer_config.json has no DeepSeek chat_template; Strata renders "
        "only DeepSeek's chat format");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
      return absl::InvalidArgumentError(Cat("messages[", i, "]: unknown role \"", role,
                                            "\" (want system, user, assistant or tool)"));
    }
  }

  if (!bos_text_.empty()) emit(bos_text_, true);
  // All system messages, wherever they are, form one prompt right after BOS.
  bool first_system = true;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (!first_system) emit("\n\n", false);
    emit(m.content, false);
    first_system = false;
  }
  bool in_tool_outputs = false;   // the template's ns.is_tool
  bool first_tool_output = true;  // ns.is_output_first: never reset, as in the template
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      in_tool_outputs = false;
      emit(kUser, true);
      emit(m.content, false);
    } else if (m.role == "assistant") {
      // After tool outputs the assistant's answer closes them instead of opening a turn.
      emit(in_tool_outputs ? kToolOutputsEnd : kAssistant, true);
      emit(m.content, false);
      emit(kEndOfSentence, true);
      in_tool_outputs = false;
    } else if (m.role == "tool") {
      in_tool_outputs = true;
      if (first_tool_output) {
        emit(kToolOutputsBegin, true);
        first_tool_output = false;
      } else {
        emit("\n", false);
      }
      emit(kToolOutputBegin, true);
      emit(m.content, false);
      emit(kToolOutputEnd, true);
    }
  }
  if (in_tool_outputs) emit(kToolOutputsEnd, true);
  if (add_generation_prompt && !in_tool_outputs) emit(kAssistant, true);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Tokenizer::ApplyChatTemplate(absl::Span<const ChatMessage> messages,
                                                         bool add_generation_prompt) const {
  size_t size = bos_text_.size() + 32;
  for (const ChatMessage& m : messages) size += m.content.size() + 64;
  std::string out;
  out.reserve(size);
  STRATA_RETURN_IF_ERROR(RenderChat(messages, add_generation_prompt,
                                    [&](std::string_view piece, bool) { out.append(piece); }));
  return out;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeChat(absl::Span<const ChatMessage> messages,
                                                           bool add_generation_prompt) const {
  std::vector<int32_t> ids;
  size_t size = 16;
  for (const ChatMessage& m : messages) size += m.content.size() / 3 + 4;
  ids.reserve(size);
  // Text since the last marker, encoded as one section as Encode would split the rendered
  // prompt: the BPE of a message's content does not depend on how the template reached it.
  std::string text;
  bool trim_start = false;  // the last marker strips the whitespace after it (rstrip)
  auto flush = [&](bool trim_end) {
    std::string_view section = text;
    std::string sanitized;
    if ((trim_start || trim_end) && !internal_tokenizer::IsValidUtf8(section)) {
      sanitized = internal_tokenizer::SanitizeUtf8(section);  // trim what Encode would see
      section = sanitized;
    }
    if (trim_start) section = internal_tokenizer::TrimJsWhitespaceStart(section);
    if (trim_end) section = internal_tokenizer::TrimJsWhitespaceEnd(section);
    EncodeTo(section, /*match_added_tokens=*/false, &ids);
    text.clear();
    trim_start = false;
  };
  STRATA_RETURN_IF_ERROR(
      RenderChat(messages, add_generation_prompt, [&](std::string_view piece, bool marker) {
        // A marker this tokenizer has no token for is text, as Encode would read it.
        const internal_tokenizer::AddedToken* token = marker ? added_tokens_->Find(piece) : nullptr;
        if (token == nullptr) {
          text.append(piece);
          return;
        }
        flush(token->lstrip);
        ids.push_back(token->id);
        trim_start = token->rstrip;
      }));
  flush(false);
  return ids;
}

}  // namespace strata::engine
