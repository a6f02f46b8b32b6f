// DeepSeek's chat format: a hand-written rendering of the chat_template in DeepSeek V3's
// tokenizer_config.json (a Jinja template), checked against the reference's Jinja rendering by
// the parity test. Tool calls (assistant messages without content) cannot be expressed by
// ChatMessage and are not rendered.
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_utf8.h"

namespace strata::engine {
namespace {

using internal_tokenizer::Cat;
using internal_tokenizer::CatTo;

// Literals of the template (it writes EOS as a literal too, not as {{eos_token}}).
constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";
constexpr std::string_view kToolOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kToolOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kToolOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kToolOutputEnd = "<｜tool▁output▁end｜>";

}  // namespace

absl::StatusOr<std::string> Tokenizer::ApplyChatTemplate(absl::Span<const ChatMessage> messages,
                                                         bool add_generation_prompt) const {
  if (!deepseek_chat_template_) {
    return absl::FailedPreconditionError(
        "this tokenizer's tokenizer_config.json has no DeepSeek chat_template; Strata renders "
        "only DeepSeek's chat format");
  }
  std::string system_prompt;
  bool first_system = true;
  size_t size = bos_text_.size() + 32;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant" && m.role != "tool") {
      return absl::InvalidArgumentError(Cat("messages[", i, "]: unknown role \"", m.role,
                                            "\" (want system, user, assistant or tool)"));
    }
    size += m.content.size() + 64;
    if (m.role != "system") continue;
    // All system messages, wherever they are, form one prompt right after BOS.
    if (!first_system) system_prompt.append("\n\n");
    system_prompt.append(m.content);
    first_system = false;
  }

  std::string out;
  out.reserve(size);
  CatTo(&out, bos_text_, system_prompt);
  bool in_tool_outputs = false;   // the template's ns.is_tool
  bool first_tool_output = true;  // ns.is_output_first: never reset, as in the template
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      in_tool_outputs = false;
      CatTo(&out, kUser, m.content);
    } else if (m.role == "assistant") {
      // After tool outputs the assistant's answer closes them instead of opening a turn.
      CatTo(&out, in_tool_outputs ? kToolOutputsEnd : kAssistant, m.content, kEndOfSentence);
      in_tool_outputs = false;
    } else if (m.role == "tool") {
      in_tool_outputs = true;
      if (first_tool_output) {
        CatTo(&out, kToolOutputsBegin, kToolOutputBegin, m.content, kToolOutputEnd);
        first_tool_output = false;
      } else {
        CatTo(&out, "\n", kToolOutputBegin, m.content, kToolOutputEnd);
      }
    }
  }
  if (in_tool_outputs) out.append(kToolOutputsEnd);
  if (add_generation_prompt && !in_tool_outputs) out.append(kAssistant);
  return out;
}

}  // namespace strata::engine
