// Fuzzes the router's decoding of what an OpenAI client sends (router/openai.h,
// router/generation.h): the JSON bodies of /v1/completions and /v1/chat/completions, and the
// traceparent header. The first byte picks what the rest is.
//
// Besides ASan and UBSan, it checks the documented contract. A body is either refused with an
// InvalidArgument whose error object (the 400 the client gets) is valid JSON, or it is a request
// that holds what ParseApiRequest promises: a model, a prompt or messages with known roles, at
// most 4 non-empty stops, sampling within range, a positive max_tokens; and the response
// objects built for it are valid JSON. A traceparent is passed on only in W3C's format.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"
#include "router/generation.h"
#include "router/openai.h"

namespace {

using strata::router::ApiRequest;
using strata::router::Endpoint;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "openai_request_fuzzer: %s\n", what.c_str());
  std::abort();
}

void Require(bool ok, const char* what) {
  if (!ok) Fail(what);
}

void RequireJson(const std::string& text, const char* what) {
  if (!nlohmann::json::accept(text)) Fail(std::string(what) + " is not valid JSON: " + text);
}

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// "00-<32 hex>-<16 hex>-<2 hex>": version (not ff), trace id and parent id (not all zeros),
// flags; lowercase hex (W3C Trace Context).
void CheckTraceparent(std::string_view header) {
  const std::string out =
      strata::router::TraceparentFor(absl::string_view(header.data(), header.size()));
  const std::string_view s = out;
  const bool ok = s.size() == 55 && s[2] == '-' && s[35] == '-' && s[52] == '-' &&
                  IsLowerHex(s.substr(0, 2)) && s.substr(0, 2) != "ff" &&
                  IsLowerHex(s.substr(3, 32)) && IsLowerHex(s.substr(36, 16)) &&
                  IsLowerHex(s.substr(53, 2)) &&
                  s.substr(3, 32).find_first_not_of('0') != std::string_view::npos &&
                  s.substr(36, 16).find_first_not_of('0') != std::string_view::npos;
  if (!ok) Fail("TraceparentFor passes on '" + out + "', not a W3C traceparent");
}

void CheckRequest(Endpoint endpoint, const ApiRequest& r) {
  Require(r.endpoint == endpoint, "the request's endpoint is not the one parsed for");
  Require(!r.model.empty(), "a request without a model was accepted");
  if (endpoint == Endpoint::kChatCompletions) {
    Require(!r.messages.empty(), "a chat request without messages was accepted");
    for (const auto& m : r.messages) {
      Require(m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool",
              "a message has a role the chat template does not know");
    }
    Require(!r.prompt_ids.has_value() && r.prompt.empty(), "a chat request has a prompt");
  } else {
    Require(r.messages.empty(), "a completion request has messages");
    if (r.prompt_ids.has_value()) {
      Require(!r.prompt_ids->empty(), "an empty list of prompt ids was accepted");
      Require(r.prompt.empty(), "a request has both a text prompt and prompt ids");
      for (int32_t id : *r.prompt_ids) Require(id >= 0, "a negative token id was accepted");
    }
  }
  Require(r.stop.size() <= strata::router::kMaxStopSequences, "more than 4 stop sequences");
  for (const auto& s : r.stop) Require(!s.empty(), "an empty stop sequence was kept");
  if (r.max_tokens.has_value()) Require(*r.max_tokens >= 1, "max_tokens below 1 was accepted");
  Require(r.sampling.temperature >= 0 && r.sampling.temperature <= 2, "temperature out of range");
  Require(r.sampling.top_p >= 0 && r.sampling.top_p <= 1, "top_p out of range");
  Require(r.sampling.top_k >= 0, "negative top_k");
  Require(!r.include_usage || r.stream, "include_usage without stream");

  // The objects the router answers with, carrying what the client sent.
  const strata::router::ResponseMeta meta{
      .endpoint = endpoint, .id = "cmpl-x", .model = r.model, .created = 1};
  const std::string text = r.messages.empty() ? r.prompt : r.messages.back().content;
  const std::vector<strata::router::TokenLogprob> logprobs = {{.token = r.user, .logprob = -1}};
  RequireJson(strata::router::CompletionJson(meta, text, strata::router::FinishReason::kStop, {},
                                             r.logprobs ? &logprobs : nullptr),
              "the completion object");
  RequireJson(strata::router::StreamChunkJson(meta, text, true, strata::router::FinishReason::kNone,
                                              r.logprobs ? &logprobs : nullptr, r.include_usage),
              "a stream chunk");
  RequireJson(strata::router::ModelJson(r.model, 1), "the model object");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  Endpoint endpoint;
  switch (data[0] % 3) {
    case 0:
      endpoint = Endpoint::kCompletions;
      break;
    case 1:
      endpoint = Endpoint::kChatCompletions;
      break;
    default:
      CheckTraceparent(rest);
      return 0;
  }
  absl::StatusOr<ApiRequest> request = strata::router::ParseApiRequest(endpoint, rest);
  if (request.ok()) {
    CheckRequest(endpoint, *request);
    return 0;
  }
  if (request.status().code() != absl::StatusCode::kInvalidArgument) {
    Fail("a bad body is refused with " + request.status().ToString() + ", not InvalidArgument");
  }
  const strata::router::ApiError error = strata::router::ApiErrorFromStatus(request.status());
  Require(error.http_status == 400, "a bad body does not get 400");
  RequireJson(strata::router::ErrorJson(error), "the error object");
  return 0;
}
