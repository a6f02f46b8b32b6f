// A small blocking HTTP/1.1 client for the command-line tools (`strata chat`): one request per
// connection (Connection: close), the response body handed over piece by piece as it arrives
// (chunked, Content-Length or close-delimited), and a splitter for text/event-stream (SSE) bodies
// whose events may arrive cut anywhere across reads. Plain http:// only; the server is our own
// router or another OpenAI-compatible one on a trusted network.
//
//   absl::StatusOr<HttpUrl> url = ParseHttpUrl("http://127.0.0.1:8000/v1");
//   SseSplitter sse;
//   absl::Status s = HttpFetch(*url, {.method = "POST", .path = "/v1/chat/completions", ...},
//       [&](const HttpResponseHead& head) { ... },
//       [&](absl::string_view piece) { sse.Feed(piece, on_event); return true; });
//
// Threading: everything here is called from one thread; nothing is shared.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace strata::cli {

struct HttpUrl {
  std::string host;  // as given, IPv6 literals without brackets
  int port = 80;
  std::string base_path;          // "" or "/prefix" without a trailing slash
  std::string Authority() const;  // "host:port", "[::1]:port"
};

// Parses "http://host[:port][/path]". A trailing "/v1" is dropped from the path, so the base URL
// an OpenAI client is given ("http://127.0.0.1:8000/v1") works as well as the server's root.
absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url);

// Decodes a chunked transfer-encoded body fed in arbitrary pieces.
class ChunkedDecoder {
 public:
  // Appends the body bytes found in `in` to `*out`. An error means the body is malformed; bytes
  // after the final chunk and its trailers are ignored.
  absl::Status Feed(absl::string_view in, std::string* out);
  bool done() const { return state_ == State::kDone; }

 private:
  enum class State { kSize, kData, kDataEnd, kTrailer, kDone };
  State state_ = State::kSize;
  std::string line_;        // a size or trailer line read so far
  uint64_t remaining_ = 0;  // bytes left in the current chunk
  bool saw_cr_ = false;     // kDataEnd: the '\r' after the data has been read
};

struct SseEvent {
  std::string type;  // the "event:" field; empty means "message"
  std::string data;  // the "data:" lines joined by '\n'
};

// Splits a text/event-stream body into events. Lines end in LF or CRLF; comments (":...") and
// fields other than event and data are skipped; an event without data is not dispatched.
class SseSplitter {
 public:
  // Calls `on_event` for every event completed by `bytes`, in order.
  void Feed(absl::string_view bytes, const std::function<void(const SseEvent&)>& on_event);

 private:
  void Line(absl::string_view line, const std::function<void(const SseEvent&)>& on_event);

  std::string partial_;  // the unterminated end of what was fed
  SseEvent event_;
  bool has_data_ = false;
};

struct HttpClientRequest {
  std::string method = "GET";
  std::string path = "/";  // appended to the URL's base path
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // sent with Content-Length when non-empty or the method is POST
  absl::Duration connect_timeout = absl::Seconds(10);
  // Longest wait for the next bytes from the server (a long prompt on a CPU takes a while).
  absl::Duration idle_timeout = absl::Minutes(10);
};

struct HttpResponseHead {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  // The value of header `name` (case-insensitive), or "" if absent.
  std::string Header(absl::string_view name) const;
};

// Sends `request` to `url` and reads the response: `on_head` once the head is in, then `on_body`
// with each piece of the (de-chunked) body as it arrives, until the body ends or `on_body`
// returns false. Errors: Unavailable when the server cannot be reached ("Connection refused"),
// DeadlineExceeded on a timeout, DataLoss when the response is malformed or cut short.
absl::Status HttpFetch(const HttpUrl& url, const HttpClientRequest& request,
                       const std::function<void(const HttpResponseHead&)>& on_head,
                       const std::function<bool(absl::string_view piece)>& on_body);

}  // namespace strata::cli
