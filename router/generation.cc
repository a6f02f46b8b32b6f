#include "router/generation.h"

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata::router {

std::optional<std::string> CanonicalChatRole(absl::string_view role) {
  if (role == "developer") return std::string("system");
  if (role == "system" || role == "user" || role == "assistant" || role == "tool") {
    return std::string(role);
  }
  return std::nullopt;
}

std::vector<int32_t> EncodePrompt(const engine::Tokenizer& tokenizer, std::string_view text) {
  std::vector<int32_t> ids = tokenizer.Encode(text);
  ids.insert(ids.begin(), tokenizer.bos_id());
  return ids;
}

absl::Status CheckTokenIds(const engine::Tokenizer& tokenizer, absl::Span<const int32_t> ids,
                           absl::string_view param) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= tokenizer.num_tokens()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", param, "' token id ", ids[i], " at position ", i,
                       " is outside the vocabulary (0..", tokenizer.num_tokens() - 1, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> FitToContext(int64_t prompt_tokens, std::optional<int64_t> requested,
                                     int64_t default_max_tokens, int64_t context,
                                     absl::string_view prompt_name) {
  if (prompt_tokens > context) {
    return absl::OutOfRangeError(absl::StrCat("This model's maximum context length is ", context,
                                              " tokens, but your prompt has ", prompt_tokens,
                                              " tokens. Please shorten the ", prompt_name, "."));
  }
  if (requested.has_value() && *requested <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'max_tokens' must be at least 1, not ", *requested));
  }
  const int64_t room = context - prompt_tokens;
  const int64_t max_tokens = requested.value_or(std::min(default_max_tokens, room));
  if (max_tokens > room || max_tokens <= 0) {
    const int64_t asked = std::max<int64_t>(max_tokens, 1);
    return absl::InvalidArgumentError(absl::StrCat(
        "This model's maximum context length is ", context, " tokens. However, you requested ",
        prompt_tokens + asked, " tokens (", prompt_tokens, " in the ", prompt_name, ", ", asked,
        " in the completion). Please reduce the length of the ", prompt_name,
        " or of the completion (max_tokens)."));
  }
  return max_tokens;
}

namespace {

bool IsLowerHex(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// W3C Trace Context's version 00 form: lowercase hex fields; version ff and all-zero ids are
// invalid. Anything else a client sends is replaced, not forwarded: the value goes into gRPC
// metadata and a proto3 string, where a stray byte would fail the request.
bool IsTraceparent(absl::string_view h) {
  if (h.size() != 55 || h[2] != '-' || h[35] != '-' || h[52] != '-') return false;
  const absl::string_view version = h.substr(0, 2), trace = h.substr(3, 32),
                          parent = h.substr(36, 16), flags = h.substr(53, 2);
  return IsLowerHex(version) && version != "ff" && IsLowerHex(trace) &&
         trace.find_first_not_of('0') != absl::string_view::npos && IsLowerHex(parent) &&
         parent.find_first_not_of('0') != absl::string_view::npos && IsLowerHex(flags);
}

}  // namespace

std::string TraceparentFor(absl::string_view header) {
  if (IsTraceparent(header)) return std::string(header);
  thread_local absl::BitGen gen;
  return absl::StrFormat("00-%016x%016x-%016x-01", absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen), absl::Uniform<uint64_t>(gen) | 1);
}

CompletionText::CompletionText(const engine::Tokenizer& tokenizer, std::vector<std::string> stops,
                               bool ignore_eos, int64_t max_tokens)
    : eos_id_(tokenizer.eos_id()),
      bos_id_(tokenizer.bos_id()),
      ignore_eos_(ignore_eos),
      max_tokens_(max_tokens),
      decoder_(tokenizer),
      stops_(std::move(stops)) {}

std::string CompletionText::Push(int32_t id) {
  ++tokens_;
  std::string text;
  if (!Hidden(id)) text = stops_.Push(decoder_.Push(id));
  if (stops_.stopped() || (id == eos_id_ && !ignore_eos_)) {
    finish_ = FinishReason::kStop;
  } else if (tokens_ >= max_tokens_) {
    finish_ = FinishReason::kLength;
  }
  return text;
}

std::string CompletionText::Finish(FinishReason upstream) {
  std::string text;
  if (!stops_.stopped()) {  // what was held back is part of the answer
    text += stops_.Push(decoder_.Flush());
    text += stops_.Flush();
  }
  if (finish_ == FinishReason::kNone) {
    finish_ = stops_.stopped() || upstream != FinishReason::kLength ? FinishReason::kStop
                                                                    : FinishReason::kLength;
  }
  return text;
}

}  // namespace strata::router
