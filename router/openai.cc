#include "router/openai.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"
#include "router/generation.h"
#include "simdjson.h"

namespace strata::router {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;
using Json = nlohmann::json;

constexpr absl::string_view kParamUrl = "strata.router/openai.param";
constexpr absl::string_view kCodeUrl = "strata.router/openai.code";
constexpr size_t kMaxStops = kMaxStopSequences;
constexpr int64_t kMaxMaxTokens = int64_t{1} << 30;

absl::Status Invalid(absl::string_view param, absl::string_view message) {
  return WithParam(absl::InvalidArgumentError(message), param);
}

absl::string_view TypeName(const element& value) {
  switch (value.type()) {
    case element_type::ARRAY:
      return "an array";
    case element_type::OBJECT:
      return "an object";
    case element_type::INT64:
    case element_type::UINT64:
      return "an integer";
    case element_type::DOUBLE:
      return "a number";
    case element_type::STRING:
      return "a string";
    case element_type::BOOL:
      return "a boolean";
    case element_type::NULL_VALUE:
      return "null";
  }
  return "a value";
}

absl::Status WrongType(absl::string_view param, const element& value, absl::string_view want) {
  return Invalid(param, absl::StrCat("'", param, "' must be ", want, ", not ", TypeName(value)));
}

absl::StatusOr<bool> GetBool(absl::string_view param, const element& value) {
  bool b;
  if (value.get_bool().get(b) != simdjson::SUCCESS) return WrongType(param, value, "a boolean");
  return b;
}

absl::StatusOr<std::string_view> GetString(absl::string_view param, const element& value) {
  std::string_view s;
  if (value.get_string().get(s) != simdjson::SUCCESS) return WrongType(param, value, "a string");
  return s;
}

absl::StatusOr<int64_t> GetInt(absl::string_view param, const element& value, int64_t min,
                               int64_t max) {
  int64_t i;
  if (value.type() == element_type::UINT64 || value.get_int64().get(i) != simdjson::SUCCESS) {
    if (value.type() == element_type::UINT64) {
      return Invalid(param, absl::StrCat("'", param, "' must be at most ", max));
    }
    return WrongType(param, value, "an integer");
  }
  if (i < min || i > max) {
    return Invalid(param,
                   absl::StrCat("'", param, "' must be between ", min, " and ", max, ", not ", i));
  }
  return i;
}

absl::StatusOr<double> GetNumber(absl::string_view param, const element& value, double min,
                                 double max) {
  double d;
  if (value.get_double().get(d) != simdjson::SUCCESS) return WrongType(param, value, "a number");
  if (!(d >= min && d <= max)) {
    return Invalid(param,
                   absl::StrCat("'", param, "' must be between ", min, " and ", max, ", not ", d));
  }
  return d;
}

// Accepts the field only at its neutral value (a feature this server does not implement must
// not be silently ignored when the client asks for it).
absl::Status Unsupported(absl::string_view param, absl::string_view what) {
  return Invalid(param, absl::StrCat("'", param, "' is not supported by this server", what));
}

absl::StatusOr<std::vector<int32_t>> GetTokenIds(absl::string_view param,
                                                 simdjson::dom::array array) {
  std::vector<int32_t> ids;
  ids.reserve(array.size());
  for (element e : array) {
    int64_t id;
    if (e.get_int64().get(id) != simdjson::SUCCESS || id < 0 ||
        id > std::numeric_limits<int32_t>::max()) {
      return Invalid(param, absl::StrCat("'", param,
                                         "' must be a string or an array of token ids "
                                         "(non-negative integers)"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) return Invalid(param, absl::StrCat("'", param, "' must not be empty"));
  return ids;
}

// A field given twice replaces its first value (as every scalar field does), so a repeated key can
// neither combine a text prompt with ids nor lift the limit on stop sequences.
absl::Status ParsePrompt(const element& value, ApiRequest& out) {
  out.prompt.clear();
  out.prompt_ids.reset();
  if (value.is_string()) {
    const std::string_view s = value.get_string().value_unsafe();
    out.prompt = std::string(s);
    return absl::OkStatus();
  }
  simdjson::dom::array array;
  if (value.get_array().get(array) != simdjson::SUCCESS) {
    return WrongType("prompt", value, "a string or an array of token ids");
  }
  if (array.size() == 0) return Invalid("prompt", "'prompt' must not be empty");
  element first = array.at(0).value_unsafe();
  if (first.is_string() || first.is_array()) {
    // A list of prompts: one is allowed (several would need n > 1 choices).
    if (array.size() != 1) {
      return Invalid("prompt",
                     "'prompt' lists several prompts; this server takes one prompt per request");
    }
    if (first.is_string()) {
      const std::string_view s = first.get_string().value_unsafe();
      out.prompt = std::string(s);
      return absl::OkStatus();
    }
    const simdjson::dom::array ids = first.get_array().value_unsafe();
    STRATA_ASSIGN_OR_RETURN(out.prompt_ids, GetTokenIds("prompt", ids));
    return absl::OkStatus();
  }
  STRATA_ASSIGN_OR_RETURN(out.prompt_ids, GetTokenIds("prompt", array));
  return absl::OkStatus();
}

absl::Status ParseMessages(const element& value, ApiRequest& out) {
  simdjson::dom::array array;
  if (value.get_array().get(array) != simdjson::SUCCESS) {
    return WrongType("messages", value, "an array of messages");
  }
  if (array.size() == 0) return Invalid("messages", "'messages' must not be empty");
  out.messages.clear();
  size_t i = 0;
  for (element m : array) {
    const std::string at = absl::StrCat("messages[", i++, "]");
    simdjson::dom::object object;
    if (m.get_object().get(object) != simdjson::SUCCESS) {
      return WrongType(at, m, "an object with 'role' and 'content'");
    }
    engine::ChatMessage message;
    element role, content;
    if (object.at_key("role").get(role) != simdjson::SUCCESS) {
      return Invalid(at + ".role", absl::StrCat("'", at, ".role' is required"));
    }
    STRATA_ASSIGN_OR_RETURN(std::string_view role_name, GetString(at + ".role", role));
    std::optional<std::string> canonical = CanonicalChatRole(ToAbsl(role_name));
    if (!canonical.has_value()) {
      return Invalid(at + ".role", absl::StrCat("'", at, ".role' must be one of ", kChatRoles,
                                                "; not '", ToAbsl(role_name), "'"));
    }
    message.role = *std::move(canonical);
    const std::string content_param = at + ".content";
    if (object.at_key("content").get(content) != simdjson::SUCCESS || content.is_null()) {
      if (message.role != "assistant") {
        return Invalid(content_param, absl::StrCat("'", content_param, "' is required"));
      }
    } else if (content.is_string()) {
      const std::string_view s = content.get_string().value_unsafe();
      message.content = std::string(s);
    } else if (content.is_array()) {
      // Content parts: only text parts; they are joined.
      size_t j = 0;
      const simdjson::dom::array parts = content.get_array().value_unsafe();
      for (element part : parts) {
        const std::string part_param = absl::StrCat(content_param, "[", j++, "]");
        std::string_view type, text;
        if (!part.is_object() || part["type"].get_string().get(type) != simdjson::SUCCESS) {
          return Invalid(part_param,
                         absl::StrCat("'", part_param, "' must be an object with 'type': 'text'"));
        }
        if (type != "text") {
          return Invalid(part_param, absl::StrCat("'", part_param, "' has type '", ToAbsl(type),
                                                  "'; only text content is supported"));
        }
        if (part["text"].get_string().get(text) != simdjson::SUCCESS) {
          return Invalid(part_param, absl::StrCat("'", part_param, ".text' must be a string"));
        }
        message.content.append(text);
      }
    } else {
      return WrongType(content_param, content, "a string or an array of content parts");
    }
    out.messages.push_back(std::move(message));
  }
  return absl::OkStatus();
}

absl::Status ParseStop(const element& value, ApiRequest& out) {
  out.stop.clear();
  if (value.is_string()) {
    const std::string_view s = value.get_string().value_unsafe();
    if (s.empty()) return Invalid("stop", "a stop sequence must not be empty");
    out.stop.emplace_back(s);
    return absl::OkStatus();
  }
  simdjson::dom::array array;
  if (value.get_array().get(array) != simdjson::SUCCESS) {
    return WrongType("stop", value, "a string or an array of strings");
  }
  if (array.size() > kMaxStops) {
    return Invalid("stop", absl::StrCat("'stop' may list at most ", kMaxStops, " sequences, not ",
                                        array.size()));
  }
  for (element e : array) {
    std::string_view s;
    if (e.get_string().get(s) != simdjson::SUCCESS) {
      return WrongType("stop", e, "a string or an array of strings");
    }
    if (s.empty()) return Invalid("stop", "a stop sequence must not be empty");
    out.stop.emplace_back(s);
  }
  return absl::OkStatus();
}

absl::Status ParseField(Endpoint endpoint, std::string_view key, const element& value,
                        ApiRequest& out, bool& saw_stream_options) {
  const bool chat = endpoint == Endpoint::kChatCompletions;
  if (key == "model") {
    STRATA_ASSIGN_OR_RETURN(std::string_view model, GetString("model", value));
    out.model = std::string(model);
  } else if (key == "prompt" && !chat) {
    return ParsePrompt(value, out);
  } else if (key == "messages" && chat) {
    return ParseMessages(value, out);
  } else if (key == "stream") {
    STRATA_ASSIGN_OR_RETURN(out.stream, GetBool("stream", value));
  } else if (key == "stream_options") {
    simdjson::dom::object options;
    if (value.get_object().get(options) != simdjson::SUCCESS) {
      return WrongType("stream_options", value, "an object");
    }
    saw_stream_options = true;
    element include;
    if (options.at_key("include_usage").get(include) == simdjson::SUCCESS && !include.is_null()) {
      STRATA_ASSIGN_OR_RETURN(out.include_usage, GetBool("stream_options.include_usage", include));
    }
  } else if (key == "max_tokens" || key == "max_completion_tokens") {
    STRATA_ASSIGN_OR_RETURN(int64_t n, GetInt(ToAbsl(key), value, 1, kMaxMaxTokens));
    // max_completion_tokens is the newer name; it wins when both are given.
    if (key == "max_completion_tokens" || !out.max_tokens.has_value()) out.max_tokens = n;
  } else if (key == "temperature") {
    STRATA_ASSIGN_OR_RETURN(double t, GetNumber("temperature", value, 0.0, 2.0));
    out.sampling.temperature = static_cast<float>(t);
  } else if (key == "top_p") {
    STRATA_ASSIGN_OR_RETURN(double p, GetNumber("top_p", value, 0.0, 1.0));
    out.sampling.top_p = static_cast<float>(p);
  } else if (key == "top_k") {
    STRATA_ASSIGN_OR_RETURN(int64_t k, GetInt("top_k", value, -1, int64_t{1} << 31));
    out.sampling.top_k = k < 0 ? 0 : k;  // -1: off, as in vLLM
  } else if (key == "seed") {
    int64_t seed;
    uint64_t useed;
    if (value.get_int64().get(seed) == simdjson::SUCCESS) {
      out.sampling.seed = static_cast<uint64_t>(seed);
    } else if (value.get_uint64().get(useed) == simdjson::SUCCESS) {
      out.sampling.seed = useed;
    } else {
      return WrongType("seed", value, "an integer");
    }
  } else if (key == "stop") {
    return ParseStop(value, out);
  } else if (key == "n") {
    STRATA_ASSIGN_OR_RETURN(int64_t n, GetInt("n", value, 1, 128));
    if (n != 1) return Invalid("n", "'n' must be 1: this server returns one choice per request");
  } else if (key == "best_of") {
    STRATA_ASSIGN_OR_RETURN(int64_t n, GetInt("best_of", value, 1, 128));
    if (n != 1) return Unsupported("best_of", " (only 1)");
  } else if (key == "logprobs") {
    if (chat) {
      STRATA_ASSIGN_OR_RETURN(out.logprobs, GetBool("logprobs", value));
    } else {
      STRATA_ASSIGN_OR_RETURN(int64_t n, GetInt("logprobs", value, 0, 5));
      if (n > 0) {
        return Invalid("logprobs",
                       "'logprobs' > 0 asks for alternative tokens, which this server does not "
                       "report; use 'logprobs': 0 for the sampled token's logprob");
      }
      out.logprobs = true;
    }
  } else if (key == "top_logprobs" && chat) {
    STRATA_ASSIGN_OR_RETURN(int64_t n, GetInt("top_logprobs", value, 0, 20));
    if (n > 0) {
      return Invalid("top_logprobs",
                     "'top_logprobs' > 0 asks for alternative tokens, which this server does not "
                     "report; use 'logprobs': true with 'top_logprobs': 0 (or leave it out)");
    }
  } else if (key == "ignore_eos") {
    STRATA_ASSIGN_OR_RETURN(out.ignore_eos, GetBool("ignore_eos", value));
  } else if (key == "user") {
    STRATA_ASSIGN_OR_RETURN(std::string_view user, GetString("user", value));
    out.user = std::string(user);
  } else if (key == "echo") {
    STRATA_ASSIGN_OR_RETURN(bool echo, GetBool("echo", value));
    if (echo) return Unsupported("echo", "");
  } else if (key == "suffix") {
    STRATA_ASSIGN_OR_RETURN(std::string_view suffix, GetString("suffix", value));
    if (!suffix.empty()) return Unsupported("suffix", "");
  } else if (key == "presence_penalty" || key == "frequency_penalty") {
    STRATA_ASSIGN_OR_RETURN(double p, GetNumber(ToAbsl(key), value, -2.0, 2.0));
    if (p != 0.0) return Unsupported(ToAbsl(key), " (only 0)");
  } else if (key == "logit_bias") {
    simdjson::dom::object bias;
    if (value.get_object().get(bias) != simdjson::SUCCESS) {
      return WrongType("logit_bias", value, "an object");
    }
    if (bias.size() != 0) return Unsupported("logit_bias", "");
  } else if (key == "tools" || key == "functions") {
    simdjson::dom::array array;
    if (value.get_array().get(array) != simdjson::SUCCESS || array.size() != 0) {
      return Unsupported(ToAbsl(key), " (tool calls are not implemented)");
    }
  } else if (key == "response_format") {
    std::string_view type;
    if (!value.is_object() || value["type"].get_string().get(type) != simdjson::SUCCESS) {
      return WrongType("response_format", value, "an object with a 'type'");
    }
    if (type != "text") return Unsupported("response_format", " (only type 'text')");
  }
  // Other fields (metadata, store, tool_choice, parallel_tool_calls, ...) do not change what is
  // generated here and are accepted and ignored, as most OpenAI-compatible servers do.
  return absl::OkStatus();
}

Json UsageJson(const Usage& usage) {
  return Json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
}

Json LogprobsJson(Endpoint endpoint, const std::vector<TokenLogprob>* logprobs) {
  if (logprobs == nullptr) return nullptr;
  if (endpoint == Endpoint::kChatCompletions) {
    Json content = Json::array();
    for (const TokenLogprob& t : *logprobs) {
      Json bytes = Json::array();
      for (unsigned char c : t.token) bytes.push_back(static_cast<int>(c));
      content.push_back(Json{{"token", t.token},
                             {"logprob", t.logprob},
                             {"bytes", std::move(bytes)},
                             {"top_logprobs", Json::array()}});
    }
    return Json{{"content", std::move(content)}};
  }
  Json tokens = Json::array(), token_logprobs = Json::array(), offsets = Json::array();
  for (const TokenLogprob& t : *logprobs) {
    tokens.push_back(t.token);
    token_logprobs.push_back(t.logprob);
    offsets.push_back(t.text_offset);
  }
  return Json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", nullptr},
              {"text_offset", std::move(offsets)}};
}

Json FinishJson(FinishReason finish) {
  const char* name = FinishReasonName(finish);
  return name == nullptr ? Json(nullptr) : Json(name);
}

Json Envelope(const ResponseMeta& meta, const char* object) {
  return Json{
      {"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

// Text from the tokenizer is valid UTF-8, but messages may quote client input: never throw on
// bad bytes, replace them.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

}  // namespace

// ---- parsing -------------------------------------------------------------------------------

absl::StatusOr<ApiRequest> ParseApiRequest(Endpoint endpoint, std::string_view body) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const simdjson::padded_string padded(body);
  if (const auto error = parser.parse(padded).get(root); error) {
    return absl::InvalidArgumentError(absl::StrCat(
        "We could not parse the JSON body of your request (", simdjson::error_message(error),
        "). The body must be a JSON object; see https://platform.openai.com/docs/api-reference"));
  }
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("The request body must be a JSON object, not ", TypeName(root)));
  }
  const bool chat = endpoint == Endpoint::kChatCompletions;
  ApiRequest out;
  out.endpoint = endpoint;
  bool saw_stream_options = false;
  bool saw_prompt = false;
  for (simdjson::dom::key_value_pair field : object) {
    if (field.key == (chat ? "messages" : "prompt")) saw_prompt = !field.value.is_null();
    if (field.value.is_null()) continue;  // null means "default" for every field
    STRATA_RETURN_IF_ERROR(ParseField(endpoint, field.key, field.value, out, saw_stream_options));
  }
  if (out.model.empty()) return Invalid("model", "'model' is required");
  if (!saw_prompt || (chat && out.messages.empty())) {
    const char* param = chat ? "messages" : "prompt";
    return Invalid(param, absl::StrCat("'", param, "' is required"));
  }
  if (saw_stream_options && !out.stream) {
    return Invalid("stream_options", "'stream_options' is only allowed when 'stream' is true");
  }
  return out;
}

// ---- errors --------------------------------------------------------------------------------

absl::Status WithParam(absl::Status status, absl::string_view param) {
  status.SetPayload(kParamUrl, absl::Cord(param));
  return status;
}

absl::Status WithCode(absl::Status status, absl::string_view code) {
  status.SetPayload(kCodeUrl, absl::Cord(code));
  return status;
}

std::string ErrorParam(const absl::Status& status) {
  const auto param = status.GetPayload(kParamUrl);
  return param ? std::string(*param) : std::string();
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    default:
      return 500;
  }
}

absl::string_view ErrorTypeFor(int http_status) {
  switch (http_status) {
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 429:
      return "rate_limit_error";
    default:
      return http_status >= 500 ? "server_error" : "invalid_request_error";
  }
}

ApiError ApiErrorFromStatus(const absl::Status& status) {
  ApiError e;
  e.http_status = HttpStatusFor(status.code());
  e.message = std::string(status.message());
  e.param = ErrorParam(status);
  if (const auto code = status.GetPayload(kCodeUrl)) e.code = std::string(*code);
  return e;
}

std::string ErrorJson(const ApiError& error) {
  const std::string type =
      error.type.empty() ? std::string(ErrorTypeFor(error.http_status)) : error.type;
  return Dump(Json{{"error",
                    {{"message", error.message},
                     {"type", type},
                     {"param", error.param.empty() ? Json(nullptr) : Json(error.param)},
                     {"code", error.code.empty() ? Json(nullptr) : Json(error.code)}}}});
}

// ---- responses -----------------------------------------------------------------------------

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kNone:
      return nullptr;
  }
  return nullptr;
}

std::string CompletionJson(const ResponseMeta& meta, absl::string_view text, FinishReason finish,
                           const Usage& usage, const std::vector<TokenLogprob>* logprobs) {
  const bool chat = meta.endpoint == Endpoint::kChatCompletions;
  Json j = Envelope(meta, chat ? "chat.completion" : "text_completion");
  Json choice;
  if (chat) {
    choice = Json{{"index", 0},
                  {"message", {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}}},
                  {"logprobs", LogprobsJson(meta.endpoint, logprobs)},
                  {"finish_reason", FinishJson(finish)}};
  } else {
    choice = Json{{"text", text},
                  {"index", 0},
                  {"logprobs", LogprobsJson(meta.endpoint, logprobs)},
                  {"finish_reason", FinishJson(finish)}};
  }
  j["choices"] = Json::array({std::move(choice)});
  j["usage"] = UsageJson(usage);
  return Dump(j);
}

std::string StreamChunkJson(const ResponseMeta& meta, absl::string_view text, bool role_chunk,
                            FinishReason finish, const std::vector<TokenLogprob>* logprobs,
                            bool usage_null) {
  const bool chat = meta.endpoint == Endpoint::kChatCompletions;
  Json j = Envelope(meta, chat ? "chat.completion.chunk" : "text_completion");
  Json choice;
  if (chat) {
    Json delta = Json::object();
    if (role_chunk) delta["role"] = "assistant";
    if (role_chunk || !text.empty()) delta["content"] = text;
    choice = Json{{"index", 0},
                  {"delta", std::move(delta)},
                  {"logprobs", LogprobsJson(meta.endpoint, logprobs)},
                  {"finish_reason", FinishJson(finish)}};
  } else {
    choice = Json{{"text", text},
                  {"index", 0},
                  {"logprobs", LogprobsJson(meta.endpoint, logprobs)},
                  {"finish_reason", FinishJson(finish)}};
  }
  j["choices"] = Json::array({std::move(choice)});
  if (usage_null) j["usage"] = nullptr;
  return Dump(j);
}

std::string UsageChunkJson(const ResponseMeta& meta, const Usage& usage) {
  const bool chat = meta.endpoint == Endpoint::kChatCompletions;
  Json j = Envelope(meta, chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = Json::array();
  j["usage"] = UsageJson(usage);
  return Dump(j);
}

std::string SseEvent(absl::string_view json) { return absl::StrCat("data: ", json, "\n\n"); }

std::string ModelJson(absl::string_view model, int64_t created) {
  return Dump(Json{{"id", std::string(model)},
                   {"object", "model"},
                   {"created", created},
                   {"owned_by", "strata"}});
}

std::string ModelListJson(const std::vector<std::string>& models, int64_t created) {
  Json data = Json::array();
  for (const std::string& m : models) {
    data.push_back(
        Json{{"id", m}, {"object", "model"}, {"created", created}, {"owned_by", "strata"}});
  }
  return Dump(Json{{"object", "list"}, {"data", std::move(data)}});
}

}  // namespace strata::router
