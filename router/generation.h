// What the router's two fronts — the OpenAI HTTP API (router/front.h) and the gRPC API
// (router/api_service.h) — share between the request they receive and the upstream: the
// prompt's ids (text, ids or chat turns), the generation budget the context leaves, the trace
// context, and the text a stream of generated ids stands for, with stop sequences cut. Keeping
// these in one place keeps the two APIs answering alike.
//
//   std::vector<int32_t> prompt = EncodePrompt(tokenizer, text);
//   STRATA_ASSIGN_OR_RETURN(int64_t max_tokens,
//                           FitToContext(prompt.size(), requested, 1024, 65536, "prompt"));
//   CompletionText out(tokenizer, stops, ignore_eos, max_tokens);
//   for (int32_t id : event.tokens) if (out.finish() == FinishReason::kNone) send(out.Push(id));
//   if (event.done) send(out.Finish(event.finish));
//
// Threading: the functions may be called from any thread; a CompletionText from one thread at a
// time (the one delivering its generation's events).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "router/upstream.h"

namespace strata::router {

// Stop sequences a request may give.
inline constexpr size_t kMaxStopSequences = 4;

// The chat roles a request may use, for error messages.
inline constexpr absl::string_view kChatRoles = "system, developer, user, assistant, tool";
// The role the chat template knows `role` as ("developer", OpenAI's newer name, is "system"), or
// nullopt for a role not in kChatRoles.
std::optional<std::string> CanonicalChatRole(absl::string_view role);

// BOS + the text's ids: how a plain-text prompt is tokenized (as `strata generate` does). Its
// control-token text is read as the control tokens, as the reference reads it: a raw prompt is
// the client's to format, as prompt ids are. A chat's messages never are: the fronts encode
// them with Tokenizer::EncodeChat.
std::vector<int32_t> EncodePrompt(const engine::Tokenizer& tokenizer, std::string_view text);

// InvalidArgument naming the first id outside the tokenizer's vocabulary (`param`: the request
// field, for the message).
absl::Status CheckTokenIds(const engine::Tokenizer& tokenizer, absl::Span<const int32_t> ids,
                           absl::string_view param);

// How many tokens the request may generate: `requested` (the client's max_tokens) or else
// `default_max_tokens` capped by the room the prompt leaves. OutOfRange when the prompt alone
// does not fit in the context; InvalidArgument when the prompt plus max_tokens does not or
// max_tokens is not positive. The messages name the lengths; `prompt_name` is what the client
// calls its prompt ("prompt", "messages").
absl::StatusOr<int64_t> FitToContext(int64_t prompt_tokens, std::optional<int64_t> requested,
                                     int64_t default_max_tokens, int64_t context,
                                     absl::string_view prompt_name);

// A W3C traceparent as the client sent it ("00-<32 hex>-<16 hex>-<2 hex>", lowercase hex, ids
// not all zeros, version not ff), or a new one when the header is absent or not of that form.
std::string TraceparentFor(absl::string_view header);

// Turns the ids a generation streams back into the text its client sees: incremental UTF-8
// decoding, BOS and EOS never shown, stop sequences cut where they complete and never leaked
// (text that could still become one is held back until it cannot), and when the generation is
// over: at EOS (unless ignore_eos), at a stop sequence, at max_tokens.
class CompletionText {
 public:
  CompletionText(const engine::Tokenizer& tokenizer, std::vector<std::string> stops,
                 bool ignore_eos, int64_t max_tokens = 0);

  // Before the first Push, when the budget was not known at construction.
  void set_max_tokens(int64_t max_tokens) { max_tokens_ = max_tokens; }

  // One generated id, counted; only while finish() is kNone. Returns the text it releases
  // (often empty: a partial UTF-8 character, or text that may start a stop sequence).
  std::string Push(int32_t id);

  // The generation ended without failing: returns the text still held back (none after a stop
  // sequence) and settles finish(): kLength when max_tokens was reached (here or upstream,
  // `upstream` being the upstream's finish reason) and no stop came, kStop otherwise.
  std::string Finish(FinishReason upstream);

  // BOS and EOS: counted as generated, never shown as text.
  bool Hidden(int32_t id) const { return id == eos_id_ || id == bos_id_; }

  // kNone while generating; kStop once EOS or a stop sequence came (the upstream need not go
  // on), kLength once max_tokens ids were pushed.
  FinishReason finish() const { return finish_; }
  int64_t tokens() const { return tokens_; }

 private:
  const int32_t eos_id_;
  const int32_t bos_id_;
  const bool ignore_eos_;
  int64_t max_tokens_;
  engine::IncrementalDecoder decoder_;
  engine::StopMatcher stops_;
  FinishReason finish_ = FinishReason::kNone;
  int64_t tokens_ = 0;
};

}  // namespace strata::router
