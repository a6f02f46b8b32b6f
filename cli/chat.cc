// strata chat: a small streaming client of the OpenAI chat API, for trying a cluster without curl.
// POSTs /v1/chat/completions with stream and include_usage, prints the content deltas to stdout as
// they arrive, and the token counts, TTFT and tokens/s to stderr. Works against `strata up`,
// `strata serve --colocated` or any OpenAI-compatible server reachable over plain HTTP.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/http_client.h"
#include "common/file.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct ChatFlags {
  std::string url = "http://127.0.0.1:8000";
  std::string api_key = "sk-strata-local";
  std::string model;  // empty: the first of GET /v1/models
  int max_tokens = 256;
  std::optional<double> temperature;
  std::string system;
  std::string document;  // a file whose text comes before the message
  std::vector<std::string> message;
  double wait_ready_s = 0;
  double timeout_s = 600;
};

// The server's own words for a failed request: OpenAI's {"error": {"message", "type", ...}}.
std::string ErrorText(const Json& error) {
  if (!error.is_object()) return error.dump();
  std::string text = error.value("message", std::string("(no message)"));
  const std::string type = error.contains("type") && error["type"].is_string()
                               ? error["type"].get<std::string>()
                               : std::string();
  return type.empty() ? text : absl::StrCat(text, " [", type, "]");
}

// "HTTP 401: Invalid API key [authentication_error]" from an error response.
std::string HttpErrorText(int status, const std::string& body) {
  Json parsed = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_discarded() && parsed.is_object() && parsed.contains("error")) {
    return absl::StrCat("HTTP ", status, ": ", ErrorText(parsed["error"]));
  }
  std::string shown = body.substr(0, 300);
  while (!shown.empty() && (shown.back() == '\n' || shown.back() == '\r')) shown.pop_back();
  return absl::StrCat("HTTP ", status, shown.empty() ? "" : ": ", shown);
}

// Adds what a user can do about a connection failure.
absl::Status Explain(const absl::Status& status, const HttpUrl& url) {
  if (!absl::IsUnavailable(status)) return status;
  return absl::UnavailableError(absl::StrCat(status.message(), " (is a server running at http://",
                                             url.Authority(),
                                             "? start one with `strata up`, or pass --url)"));
}

HttpClientRequest Request(const ChatFlags& flags, std::string method, std::string path) {
  HttpClientRequest request{.method = std::move(method), .path = std::move(path)};
  if (!flags.api_key.empty()) {
    request.headers.emplace_back("Authorization", absl::StrCat("Bearer ", flags.api_key));
  }
  request.idle_timeout = absl::Seconds(flags.timeout_s);
  return request;
}

// A GET whose whole body is wanted (small replies only).
absl::Status Get(const HttpUrl& url, const HttpClientRequest& request, int* status,
                 std::string* body) {
  return HttpFetch(
      url, request, [&](const HttpResponseHead& head) { *status = head.status; },
      [&](absl::string_view piece) {
        body->append(piece.data(), piece.size());
        return body->size() < (1u << 20);
      });
}

// Polls GET /healthz until it answers 200, for up to `seconds`.
absl::Status WaitReady(const HttpUrl& url, double seconds) {
  const absl::Time deadline = absl::Now() + absl::Seconds(seconds);
  absl::Status last;
  while (true) {
    HttpClientRequest probe{
        .path = "/healthz", .connect_timeout = absl::Seconds(1), .idle_timeout = absl::Seconds(2)};
    int status = 0;
    std::string body;
    last = Get(url, probe, &status, &body);
    if (last.ok() && status == 200) return absl::OkStatus();
    if (last.ok()) last = absl::UnavailableError(absl::StrCat("/healthz answers ", status));
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "http://", url.Authority(), " was not ready within ", seconds, " s: ", last.message()));
}

absl::StatusOr<std::string> FirstModel(const HttpUrl& url, const ChatFlags& flags) {
  int status = 0;
  std::string body;
  if (absl::Status s = Get(url, Request(flags, "GET", "/v1/models"), &status, &body); !s.ok()) {
    return Explain(s, url);
  }
  if (status != 200) {
    return absl::FailedPreconditionError(
        absl::StrCat("GET /v1/models: ", HttpErrorText(status, body)));
  }
  Json parsed = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_object() && parsed.contains("data") && parsed["data"].is_array() &&
      !parsed["data"].empty() && parsed["data"][0].contains("id") &&
      parsed["data"][0]["id"].is_string()) {
    return parsed["data"][0]["id"].get<std::string>();
  }
  return absl::FailedPreconditionError("GET /v1/models lists no model; pass one with --model NAME");
}

struct Outcome {
  std::optional<int64_t> prompt_tokens, completion_tokens, cached_tokens;
  int content_chunks = 0;
  std::optional<Clock::time_point> first_content;
  std::string finish_reason;
};

// Streams one chat completion to stdout.
absl::Status Chat(const HttpUrl& url, const ChatFlags& flags, const std::string& model,
                  Outcome* outcome) {
  Json messages = Json::array();
  if (!flags.system.empty()) messages.push_back({{"role", "system"}, {"content", flags.system}});
  std::string content = absl::StrJoin(flags.message, " ");
  if (!flags.document.empty()) {
    absl::StatusOr<std::string> text = ReadFile(flags.document);
    if (!text.ok()) return text.status();
    // The document first: questions about the same document share its prefix (and its KV).
    content = absl::StrCat(*text, "\n\n", content);
  }
  messages.push_back({{"role", "user"}, {"content", std::move(content)}});
  Json body = {{"model", model},
               {"messages", std::move(messages)},
               {"max_tokens", flags.max_tokens},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (flags.temperature.has_value()) body["temperature"] = *flags.temperature;
  HttpClientRequest request = Request(flags, "POST", "/v1/chat/completions");
  request.headers.emplace_back("Content-Type", "application/json");
  request.headers.emplace_back("Accept", "text/event-stream");
  request.body = body.dump();

  int status = 0;
  std::string error_body;  // the body of a non-200 answer
  absl::Status stream_error;
  bool done = false;
  bool printed = false;
  SseSplitter sse;
  auto on_event = [&](const SseEvent& event) {
    if (done || !stream_error.ok()) return;
    if (event.data == "[DONE]") {
      done = true;
      return;
    }
    Json chunk = Json::parse(event.data, nullptr, /*allow_exceptions=*/false);
    if (chunk.is_discarded() || !chunk.is_object()) {
      stream_error = absl::DataLossError(absl::StrCat(
          "the server sent an event that is not a JSON object: ", event.data.substr(0, 200)));
      return;
    }
    if (chunk.contains("error")) {
      stream_error = absl::InternalError(
          absl::StrCat("the server failed the request mid-stream: ", ErrorText(chunk["error"])));
      return;
    }
    if (chunk.contains("choices") && chunk["choices"].is_array()) {
      for (const Json& choice : chunk["choices"]) {
        if (!choice.is_object()) continue;
        if (choice.contains("delta") && choice["delta"].is_object() &&
            choice["delta"].contains("content") && choice["delta"]["content"].is_string()) {
          const std::string& text = choice["delta"]["content"].get_ref<const std::string&>();
          if (!text.empty()) {
            if (!outcome->first_content.has_value()) outcome->first_content = Clock::now();
            ++outcome->content_chunks;
            std::fwrite(text.data(), 1, text.size(), stdout);
            std::fflush(stdout);
            printed = true;
          }
        }
        if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
          outcome->finish_reason = choice["finish_reason"].get<std::string>();
        }
      }
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) {
      const Json& usage = chunk["usage"];
      outcome->prompt_tokens = usage.value("prompt_tokens", int64_t{0});
      outcome->completion_tokens = usage.value("completion_tokens", int64_t{0});
      if (usage.contains("prompt_tokens_details") && usage["prompt_tokens_details"].is_object()) {
        outcome->cached_tokens = usage["prompt_tokens_details"].value("cached_tokens", int64_t{0});
      }
    }
  };
  absl::Status fetched = HttpFetch(
      url, request, [&](const HttpResponseHead& head) { status = head.status; },
      [&](absl::string_view piece) {
        if (status != 200) {
          error_body.append(piece.data(), piece.size());
          return error_body.size() < (1u << 20);
        }
        sse.Feed(piece, on_event);
        return !done && stream_error.ok();
      });
  if (printed) {
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  if (!fetched.ok()) return Explain(fetched, url);
  if (status != 200) {
    return absl::FailedPreconditionError(
        absl::StrCat("POST /v1/chat/completions: ", HttpErrorText(status, error_body)));
  }
  if (!stream_error.ok()) return stream_error;
  if (!done) return absl::DataLossError("the stream ended without its final [DONE] event");
  return absl::OkStatus();
}

int RunChat(const ChatFlags& flags) {
  absl::StatusOr<HttpUrl> url = ParseHttpUrl(flags.url);
  if (!url.ok()) return Fail("chat", std::string(url.status().message()));
  signal(SIGPIPE, SIG_IGN);  // `strata chat ... | head`: a closed stdout is not a crash
  if (flags.wait_ready_s > 0) {
    if (absl::Status s = WaitReady(*url, flags.wait_ready_s); !s.ok()) {
      return Fail("chat", std::string(s.message()));
    }
  }
  std::string model = flags.model;
  if (model.empty()) {
    absl::StatusOr<std::string> first = FirstModel(*url, flags);
    if (!first.ok()) return Fail("chat", std::string(first.status().message()));
    model = *std::move(first);
  }
  const Clock::time_point start = Clock::now();
  Outcome outcome;
  if (absl::Status s = Chat(*url, flags, model, &outcome); !s.ok()) {
    return Fail("chat", std::string(s.message()));
  }
  const Clock::time_point end = Clock::now();
  auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  const int64_t completion = outcome.completion_tokens.value_or(outcome.content_chunks);
  std::string line = absl::StrCat(
      "model ", model, ": prompt ",
      outcome.prompt_tokens.has_value() ? absl::StrCat(*outcome.prompt_tokens) : "?", " tokens");
  if (outcome.cached_tokens.value_or(0) > 0) {
    absl::StrAppend(&line, " (", *outcome.cached_tokens, " cached)");
  }
  absl::StrAppend(
      &line, ", completion ", completion, " tokens",
      outcome.finish_reason.empty() ? "" : absl::StrCat(" (", outcome.finish_reason, ")"));
  char figures[160];
  if (outcome.first_content.has_value()) {
    const double decode_s = seconds(end - *outcome.first_content);
    std::snprintf(
        figures, sizeof(figures), "; TTFT %.3f s, %.2f tokens/s, total %.2f s",
        seconds(*outcome.first_content - start),
        completion > 1 && decode_s > 0 ? static_cast<double>(completion - 1) / decode_s : 0.0,
        seconds(end - start));
  } else {
    std::snprintf(figures, sizeof(figures), "; no text, total %.2f s", seconds(end - start));
  }
  std::fprintf(stderr, "%s%s\n", line.c_str(), figures);
  return 0;
}

}  // namespace

void AddChatCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ChatFlags>();
  CLI::App* cmd = app.add_subcommand(
      "chat",
      "Send one chat message to a running server (OpenAI API: `strata up`, `strata serve "
      "--colocated`) and stream the answer to stdout; prompt/completion tokens, TTFT and "
      "tokens/s go to stderr.");
  cmd->add_option("--url", flags->url,
                  "the server's base URL (http:// only; a trailing /v1 is fine)")
      ->capture_default_str();
  cmd->add_option("--api-key", flags->api_key, "bearer API key (empty: send none)")
      ->capture_default_str();
  cmd->add_option("--model", flags->model, "model name (default: the first from GET /v1/models)");
  cmd->add_option("--max-tokens", flags->max_tokens, "most tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--temperature", flags->temperature,
                  "sampling temperature (default: the server's; 0 is greedy)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--system", flags->system, "a system message sent before MESSAGE");
  cmd->add_option("--wait-ready", flags->wait_ready_s,
                  "first wait up to this many seconds for GET /healthz to answer 200")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--timeout", flags->timeout_s,
                  "give up when the server sends nothing for this many seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--document", flags->document,
                  "a text file sent before MESSAGE in the same user message (ask several questions about "
                  "one document: the cluster reuses its KV, and the stats line shows the cached tokens)");
  cmd->add_option("message", flags->message,
                  "the user message (several words are joined by spaces)")
      ->required();
  cmd->callback([flags, exit_code] { *exit_code = RunChat(*flags); });
}

}  // namespace strata::cli
