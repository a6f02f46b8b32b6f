// The OpenAI API's wire format, as the router speaks it: parsing and validating the bodies of
// POST /v1/completions and POST /v1/chat/completions, and writing completion objects, streamed
// chunks (server-sent events), model lists and error bodies. No I/O and no state: the front
// (router/front.h) calls these.
//
//   absl::StatusOr<ApiRequest> request = ParseApiRequest(Endpoint::kChatCompletions, body);
//   if (!request.ok()) reply(ApiErrorFromStatus(request.status()));  // 400 with error.param
//
// Threading: every function may be called from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "router/upstream.h"

namespace strata::router {

enum class Endpoint { kCompletions, kChatCompletions };

// A validated request. Fields the client left out hold the defaults below (max_tokens: the
// front's default).
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  // /v1/completions: the prompt as text (BOS is added when tokenizing), or as token ids given
  // directly (used exactly as given).
  std::string prompt;
  std::optional<std::vector<int32_t>> prompt_ids;
  // /v1/chat/completions
  std::vector<engine::ChatMessage> messages;

  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::optional<int64_t> max_tokens;
  engine::SamplingParams sampling;
  std::vector<std::string> stop;  // at most 4, none empty
  bool logprobs = false;          // report the sampled token's logprob
  bool ignore_eos = false;
  std::string user;
};

// Parses and validates a request body. Every problem is an InvalidArgument whose message can be
// shown to the client as it is and which names the field (see ErrorParam).
absl::StatusOr<ApiRequest> ParseApiRequest(Endpoint endpoint, std::string_view body);

// ---- errors --------------------------------------------------------------------------------

// OpenAI's error object: {"error":{"message","type","param","code"}}.
struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type;   // from the status if empty: invalid_request_error, authentication_error, ...
  std::string param;  // the request field at fault; empty: null
  std::string code;   // machine-readable detail ("context_length_exceeded"); empty: null
};

// Attaches OpenAI's `param` / `code` to a status (as payloads), for ApiErrorFromStatus.
absl::Status WithParam(absl::Status status, absl::string_view param);
absl::Status WithCode(absl::Status status, absl::string_view code);
std::string ErrorParam(const absl::Status& status);

// The HTTP status a failed Status maps to: InvalidArgument 400, Unauthenticated 401,
// PermissionDenied 403, NotFound 404, ResourceExhausted 429 (a quota or rate limit: the client
// should slow down), Unavailable 503 (no capacity or no workers: retry later), anything else
// 500. This is the usual gRPC <-> HTTP mapping, so workers and the cluster client can report
// errors with ordinary gRPC codes.
int HttpStatusFor(absl::StatusCode code);
ApiError ApiErrorFromStatus(const absl::Status& status);
// OpenAI's `type` for an HTTP status.
absl::string_view ErrorTypeFor(int http_status);
// {"error":{...}} (no trailing newline).
std::string ErrorJson(const ApiError& error);

// ---- responses -----------------------------------------------------------------------------

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};

// One generated token with its logprob. `text_offset` is where the token's text starts in the
// completion (completions' logprobs format).
struct TokenLogprob {
  std::string token;
  float logprob = 0;
  int64_t text_offset = 0;
};

// What every object of one response shares.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;  // "cmpl-…" / "chatcmpl-…"
  std::string model;
  int64_t created = 0;  // Unix seconds
};

const char* FinishReasonName(FinishReason reason);  // "stop", "length"; nullptr for kNone

// The non-streamed response: a text_completion or chat.completion object.
std::string CompletionJson(const ResponseMeta& meta, absl::string_view text, FinishReason finish,
                           const Usage& usage, const std::vector<TokenLogprob>* logprobs);

// One streamed chunk (text_completion or chat.completion.chunk). `role_chunk`: the first chat
// chunk, whose delta carries role "assistant". `finish` kNone: not the last chunk.
// `usage_null`: with stream_options.include_usage, chunks other than the usage chunk carry
// "usage": null.
std::string StreamChunkJson(const ResponseMeta& meta, absl::string_view text, bool role_chunk,
                            FinishReason finish, const std::vector<TokenLogprob>* logprobs,
                            bool usage_null);
// The chunk sent after the last one when include_usage is set: empty choices, the usage.
std::string UsageChunkJson(const ResponseMeta& meta, const Usage& usage);

// "data: <json>\n\n"
std::string SseEvent(absl::string_view json);
inline constexpr absl::string_view kSseDone = "data: [DONE]\n\n";
// An SSE comment: clients ignore it; it keeps the connection (and proxies' idle timers) alive.
inline constexpr absl::string_view kSseKeepAlive = ": keep-alive\n\n";

// GET /v1/models: {"object":"list","data":[{"id","object":"model","created","owned_by"}]}.
std::string ModelListJson(const std::vector<std::string>& models, int64_t created);
std::string ModelJson(absl::string_view model, int64_t created);

}  // namespace strata::router
