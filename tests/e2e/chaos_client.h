// A client's view of one streamed completion under faults, for tests/e2e/chaos_test.cc: sends the
// request on its own connection (Connection: close), reads until the server closes, and sorts the
// answer into exactly one of three outcomes:
//   completed    HTTP 200 SSE: chunks, one with a finish_reason, the usage chunk, then [DONE], and
//                the chunked body's last chunk;
//   clean error  an OpenAI error object: HTTP 4xx/5xx with a JSON {"error":{"message":...}} body,
//                or, once the 200 stream has begun, an error event followed by [DONE] and the end;
//   failure      anything else: no connection, no byte for `idle` (a hang), a body cut short (a
//                truncated stream, the connection closed mid-event), unparsable events, an event
//                after [DONE], an error without [DONE], a stream with neither a finish nor an
//                error.
// Header-only, test use only.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace strata::testing {

enum class Outcome { kCompleted, kCleanError, kFailure };

inline const char* OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kCompleted:
      return "completed";
    case Outcome::kCleanError:
      return "clean error";
    case Outcome::kFailure:
      return "FAILURE";
  }
  return "?";
}

struct StreamResult {
  Outcome outcome = Outcome::kFailure;
  std::string detail;  // the error's message, or what was wrong
  int http_status = 0;
  std::string text;  // completed: the concatenated choices[0].text
  std::string finish_reason;
  int64_t completion_tokens = -1;  // from the usage chunk
  absl::Time start, end;
};

namespace chaos_internal {

// De-chunks an HTTP/1.1 chunked body; nullopt if it is cut short or malformed (the last, empty
// chunk is required: without it the stream was truncated).
inline std::optional<std::string> Dechunk(absl::string_view body, std::string* why) {
  std::string out;
  for (;;) {
    const size_t eol = body.find("\r\n");
    if (eol == absl::string_view::npos) {
      *why = out.empty() && body.empty() ? "no body" : "chunked body cut short (no last chunk)";
      return std::nullopt;
    }
    size_t size = 0;
    absl::string_view size_field = body.substr(0, eol);
    size_field = size_field.substr(0, size_field.find(';'));
    if (!absl::SimpleHexAtoi(size_field, &size)) {
      *why = absl::StrCat("bad chunk size line '", body.substr(0, std::min<size_t>(eol, 40)), "'");
      return std::nullopt;
    }
    body.remove_prefix(eol + 2);
    if (size == 0) return out;  // trailers, if any, do not matter
    if (body.size() < size + 2) {
      *why = "chunked body cut short (mid-chunk)";
      return std::nullopt;
    }
    out.append(body.data(), size);
    body.remove_prefix(size + 2);
  }
}

// An OpenAI error object's message, or nullopt if `j` is not one.
inline std::optional<std::string> ErrorMessage(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("error") || !j["error"].is_object()) return std::nullopt;
  const nlohmann::json& e = j["error"];
  if (!e.contains("message") || !e["message"].is_string()) return std::nullopt;
  return e["message"].get<std::string>();
}

// Sorts an SSE body (de-chunked) of a 200 answer.
inline void ClassifySse(absl::string_view sse, StreamResult& r) {
  if (!sse.empty() && !absl::EndsWith(sse, "\n\n")) {
    r.detail = "stream cut mid-event";
    return;
  }
  bool done = false;
  std::optional<std::string> error;
  for (absl::string_view event : absl::StrSplit(sse, "\n\n", absl::SkipEmpty())) {
    if (absl::StartsWith(event, ":")) continue;  // a comment: the router's keep-alive
    if (!absl::ConsumePrefix(&event, "data: ")) {
      r.detail = absl::StrCat("not an SSE data event: '", event.substr(0, 80), "'");
      return;
    }
    if (done) {
      r.detail = "an event after [DONE]";
      return;
    }
    if (event == "[DONE]") {
      done = true;
      continue;
    }
    nlohmann::json j = nlohmann::json::parse(event, nullptr, false);
    if (j.is_discarded()) {
      r.detail = absl::StrCat("unparsable event: '", event.substr(0, 80), "'");
      return;
    }
    if (std::optional<std::string> m = ErrorMessage(j)) {
      error = *m;
      continue;
    }
    if (error) {
      r.detail = "a chunk after the error event";
      return;
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      r.completion_tokens = j["usage"].value("completion_tokens", int64_t{-1});
    }
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) continue;
    const nlohmann::json& c = j["choices"][0];
    if (c.contains("text") && c["text"].is_string()) r.text += c["text"].get<std::string>();
    if (c.contains("finish_reason") && c["finish_reason"].is_string()) {
      if (!r.finish_reason.empty()) {
        r.detail = "two finish reasons";
        return;
      }
      r.finish_reason = c["finish_reason"];
    }
  }
  if (!done) {
    r.detail = error ? absl::StrCat("error event '", *error, "' without [DONE]") : "no [DONE]";
    return;
  }
  if (error) {
    r.outcome = Outcome::kCleanError;
    r.detail = absl::StrCat("in-stream: ", *error);
    return;
  }
  if (r.finish_reason.empty()) {
    r.detail = "[DONE] without a finish_reason";
    return;
  }
  r.outcome = Outcome::kCompleted;
}

}  // namespace chaos_internal

// Sorts a whole HTTP response (as read until the server closed the connection).
inline void ClassifyResponse(absl::string_view raw, StreamResult& r) {
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == absl::string_view::npos) {
    r.detail = raw.empty() ? "connection closed without an answer" : "response head cut short";
    return;
  }
  std::vector<absl::string_view> lines = absl::StrSplit(raw.substr(0, head_end), "\r\n");
  std::vector<absl::string_view> first = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (first.size() < 2 || !absl::SimpleAtoi(first[1], &r.http_status)) {
    r.detail = absl::StrCat("bad status line '", lines[0], "'");
    return;
  }
  bool chunked = false;
  std::optional<size_t> length;
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    absl::string_view name = lines[i].substr(0, colon);
    absl::string_view value = absl::StripAsciiWhitespace(lines[i].substr(colon + 1));
    if (absl::EqualsIgnoreCase(name, "Transfer-Encoding"))
      chunked = absl::EqualsIgnoreCase(value, "chunked");
    size_t n = 0;
    if (absl::EqualsIgnoreCase(name, "Content-Length") && absl::SimpleAtoi(value, &n)) length = n;
  }
  absl::string_view rest = raw.substr(head_end + 4);
  std::string body;
  if (chunked) {
    std::string why;
    std::optional<std::string> b = chaos_internal::Dechunk(rest, &why);
    if (!b) {
      r.detail = why;
      return;
    }
    body = *std::move(b);
  } else if (length) {
    if (rest.size() < *length) {
      r.detail = absl::StrCat("body cut short: ", rest.size(), " of ", *length, " bytes");
      return;
    }
    body = std::string(rest.substr(0, *length));
  } else {
    r.detail = "neither chunked nor Content-Length";
    return;
  }
  if (r.http_status == 200) return chaos_internal::ClassifySse(body, r);
  if (r.http_status >= 400 && r.http_status < 600) {
    std::optional<std::string> m =
        chaos_internal::ErrorMessage(nlohmann::json::parse(body, nullptr, false));
    if (!m) {
      r.detail = absl::StrCat("HTTP ", r.http_status, " without an OpenAI error body: '",
                              body.substr(0, 80), "'");
      return;
    }
    r.outcome = Outcome::kCleanError;
    r.detail = absl::StrCat("HTTP ", r.http_status, ": ", *m);
    return;
  }
  r.detail = absl::StrCat("unexpected HTTP ", r.http_status);
}

// POSTs `body` (a streamed request) to http://127.0.0.1:port`path` and sorts the answer. A silence
// of `idle` (no byte, keep-alives included) is a hang, and so is an answer still going on after
// `limit`.
inline StreamResult StreamOnce(int port, const std::string& path, const std::string& api_key,
                               const std::string& body, absl::Duration idle, absl::Duration limit) {
  StreamResult r;
  r.start = absl::Now();
  const absl::Time deadline = r.start + limit;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int error = errno;
    if (fd >= 0) ::close(fd);
    r.detail = absl::StrCat("cannot connect to the router: ", strerror(error));
    r.end = absl::Now();
    return r;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const std::string request = absl::StrCat(
      "POST ", path,
      " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n",
      "Authorization: Bearer ", api_key, "\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
  absl::string_view out = request;
  while (!out.empty()) {
    const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    if (n <= 0) break;
    out.remove_prefix(static_cast<size_t>(n));
  }
  std::string raw;
  bool hung = false;
  if (out.empty()) {
    char buf[16384];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      const absl::Duration wait = std::min(idle, deadline - absl::Now());
      const int ready = wait <= absl::ZeroDuration()
                            ? 0
                            : ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(wait)));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) {
        hung = true;
        break;
      }
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;  // closed (or reset): the answer is whatever came
      raw.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  r.end = absl::Now();
  if (!out.empty()) {
    r.detail = "could not send the request";
  } else if (hung) {
    r.detail = r.end >= deadline ? absl::StrCat("hang: no end after ", absl::FormatDuration(limit),
                                                " (", raw.size(), " bytes)")
                                 : absl::StrCat("hang: no byte for ", absl::FormatDuration(idle),
                                                " after ", raw.size(), " bytes");
  } else {
    ClassifyResponse(raw, r);
  }
  return r;
}

}  // namespace strata::testing
