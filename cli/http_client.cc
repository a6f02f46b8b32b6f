#include "cli/http_client.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace strata::cli {
namespace {

constexpr size_t kMaxHeadBytes = 64 * 1024;
constexpr size_t kMaxLineBytes = 4096;                 // a chunk-size or trailer line
constexpr size_t kMaxSseLineBytes = 16 * 1024 * 1024;  // one "data:" line (a whole JSON event)

std::string ErrnoText(int err) { return std::string(strerror(err)); }

int PollMs(absl::Time deadline) {
  return static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(deadline - absl::Now()), 0, 1 << 30));
}

// A connected, non-blocking TCP socket, or an error naming the server.
absl::StatusOr<int> Connect(const HttpUrl& url, absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc =
          getaddrinfo(url.host.c_str(), std::to_string(url.port).c_str(), &hints, &found);
      rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", url.host, ": ", gai_strerror(rc)));
  }
  absl::Cleanup free_found = [found] { freeaddrinfo(found); };
  const absl::Time deadline = absl::Now() + timeout;
  int last_error = 0;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd =
        socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_error = errno;
      continue;
    }
    int err = 0;
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        socklen_t len = sizeof(err);
        if (poll(&p, 1, PollMs(deadline)) != 1) {
          err = ETIMEDOUT;
        } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err == 0) return fd;
    close(fd);
    last_error = err;
  }
  return absl::UnavailableError(absl::StrCat("cannot connect to ", url.Authority(), ": ",
                                             ErrnoText(last_error != 0 ? last_error : ENOTCONN)));
}

absl::Status SendAll(int fd, absl::string_view data, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, PollMs(deadline)) != 1) {
        return absl::DeadlineExceededError("timed out sending the request");
      }
      continue;
    }
    return absl::UnavailableError(absl::StrCat("sending the request: ", ErrnoText(errno)));
  }
  return absl::OkStatus();
}

// Reads what is there, waiting up to `idle` for something to arrive. Returns the bytes
// read; empty at EOF.
absl::StatusOr<std::string> ReadSome(int fd, absl::Duration idle) {
  char buf[16 * 1024];
  const absl::Time deadline = absl::Now() + idle;
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n >= 0) return std::string(buf, static_cast<size_t>(n));
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return absl::UnavailableError(absl::StrCat("reading the response: ", ErrnoText(errno)));
    }
    pollfd p{fd, POLLIN, 0};
    const int rc = poll(&p, 1, PollMs(deadline));
    if (rc == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("the server sent nothing for ", absl::FormatDuration(idle), "; giving up"));
    }
    if (rc < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("poll: ", ErrnoText(errno)));
    }
  }
}

// Parses a response head (status line and headers, without the blank line).
absl::StatusOr<HttpResponseHead> ParseHead(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, "\r\n");
  HttpResponseHead head;
  // "HTTP/1.1 200 OK"
  std::vector<absl::string_view> words = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (words.size() < 2 || !absl::StartsWith(words[0], "HTTP/1.") ||
      !absl::SimpleAtoi(words[1], &head.status) || head.status < 100 || head.status > 999) {
    return absl::DataLossError(
        absl::StrCat("not an HTTP/1.x response: '", absl::CEscape(lines[0].substr(0, 80)), "'"));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) {
      return absl::DataLossError(
          absl::StrCat("malformed response header '", absl::CEscape(lines[i].substr(0, 80)), "'"));
    }
    head.headers.emplace_back(std::string(absl::StripAsciiWhitespace(lines[i].substr(0, colon))),
                              std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1))));
  }
  return head;
}

}  // namespace

std::string HttpUrl::Authority() const {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
}

absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url) {
  absl::string_view rest = url;
  if (absl::StartsWithIgnoreCase(rest, "https://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", url, "': https is not supported; use http:// (put a TLS proxy in front if needed)"));
  }
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", url, "' is not an http:// URL (example: http://127.0.0.1:8000)"));
  }
  const size_t slash = rest.find('/');
  absl::string_view authority = rest.substr(0, slash);
  absl::string_view path = slash == absl::string_view::npos ? "" : rest.substr(slash);
  HttpUrl out;
  absl::string_view port_text;
  if (absl::ConsumePrefix(&authority, "[")) {  // [::1]:8000
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("'", url, "': unterminated '[' in the host"));
    }
    out.host = std::string(authority.substr(0, close));
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty() && !absl::ConsumePrefix(&after, ":")) {
      return absl::InvalidArgumentError(absl::StrCat("'", url, "': junk after the host"));
    }
    port_text = after;
  } else {
    const size_t colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != absl::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (out.host.empty()) return absl::InvalidArgumentError(absl::StrCat("'", url, "' has no host"));
  if (!port_text.empty() &&
      (!absl::SimpleAtoi(port_text, &out.port) || out.port <= 0 || out.port > 65535)) {
    return absl::InvalidArgumentError(absl::StrCat("'", url, "': bad port '", port_text, "'"));
  }
  while (absl::ConsumeSuffix(&path, "/")) {
  }
  absl::ConsumeSuffix(&path, "/v1");
  if (path.find_first_of("?#") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", url, "': a query or fragment is not allowed"));
  }
  out.base_path = std::string(path);
  return out;
}

// ---- chunked bodies -----------------------------------------------------------------------------

absl::Status ChunkedDecoder::Feed(absl::string_view in, std::string* out) {
  size_t i = 0;
  while (i < in.size() && state_ != State::kDone) {
    switch (state_) {
      case State::kSize:
      case State::kTrailer: {
        const char c = in[i++];
        if (c != '\n') {
          if (line_.size() >= kMaxLineBytes) {
            return absl::DataLossError("chunked body: a chunk-size or trailer line is too long");
          }
          line_ += c;
          break;
        }
        absl::string_view line = line_;
        absl::ConsumeSuffix(&line, "\r");
        if (state_ == State::kTrailer) {
          if (line.empty()) state_ = State::kDone;
          line_.clear();
          break;
        }
        // "1a3f[;extension]"
        absl::string_view size_text = absl::StripAsciiWhitespace(line.substr(0, line.find(';')));
        if (size_text.empty() || size_text.size() > 15 ||
            !std::all_of(
                size_text.begin(), size_text.end(),
                [](char h) { return absl::ascii_isxdigit(static_cast<unsigned char>(h)); }) ||
            !absl::SimpleHexAtoi(size_text, &remaining_)) {
          return absl::DataLossError(absl::StrCat("chunked body: bad chunk size '",
                                                  absl::CEscape(line.substr(0, 40)), "'"));
        }
        line_.clear();
        state_ = remaining_ == 0 ? State::kTrailer : State::kData;
        break;
      }
      case State::kData: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size() - i));
        out->append(in.data() + i, n);
        i += n;
        remaining_ -= n;
        if (remaining_ == 0) state_ = State::kDataEnd;
        break;
      }
      case State::kDataEnd: {
        const char c = in[i++];
        if (c == '\r' && !saw_cr_) {
          saw_cr_ = true;
        } else if (c == '\n') {
          saw_cr_ = false;
          state_ = State::kSize;
        } else {
          return absl::DataLossError("chunked body: a chunk does not end with CRLF");
        }
        break;
      }
      case State::kDone:
        break;
    }
  }
  return absl::OkStatus();
}

// ---- server-sent events -------------------------------------------------------------------------

void SseSplitter::Feed(absl::string_view bytes,
                       const std::function<void(const SseEvent&)>& on_event) {
  partial_.append(bytes.data(), bytes.size());
  size_t start = 0;
  while (true) {
    const size_t nl = partial_.find('\n', start);
    if (nl == std::string::npos) break;
    absl::string_view line(partial_.data() + start, nl - start);
    absl::ConsumeSuffix(&line, "\r");
    Line(line, on_event);
    start = nl + 1;
  }
  partial_.erase(0, start);
  // A server that never ends a line would otherwise grow this without bound.
  if (partial_.size() > kMaxSseLineBytes) partial_.clear();
}

void SseSplitter::Line(absl::string_view line,
                       const std::function<void(const SseEvent&)>& on_event) {
  if (line.empty()) {  // the blank line that ends an event
    if (has_data_) on_event(event_);
    event_ = SseEvent();
    has_data_ = false;
    return;
  }
  if (line.front() == ':') return;  // a comment (keep-alive)
  const size_t colon = line.find(':');
  absl::string_view field = line.substr(0, colon);
  absl::string_view value = colon == absl::string_view::npos ? "" : line.substr(colon + 1);
  absl::ConsumePrefix(&value, " ");
  if (field == "data") {
    if (has_data_) event_.data += '\n';
    absl::StrAppend(&event_.data, value);
    has_data_ = true;
  } else if (field == "event") {
    event_.type = std::string(value);
  }
}

// ---- the request --------------------------------------------------------------------------------

std::string HttpResponseHead::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return "";
}

absl::Status HttpFetch(const HttpUrl& url, const HttpClientRequest& request,
                       const std::function<void(const HttpResponseHead&)>& on_head,
                       const std::function<bool(absl::string_view piece)>& on_body) {
  absl::StatusOr<int> connected = Connect(url, request.connect_timeout);
  if (!connected.ok()) return connected.status();
  const int fd = *connected;
  absl::Cleanup close_fd = [fd] { close(fd); };

  std::string out = absl::StrCat(request.method, " ", url.base_path, request.path,
                                 " HTTP/1.1\r\nHost: ", url.Authority(),
                                 "\r\nUser-Agent: strata-cli\r\nConnection: close\r\n");
  for (const auto& [key, value] : request.headers) absl::StrAppend(&out, key, ": ", value, "\r\n");
  if (!request.body.empty() || request.method == "POST") {
    absl::StrAppend(&out, "Content-Length: ", request.body.size(), "\r\n");
  }
  absl::StrAppend(&out, "\r\n", request.body);
  if (absl::Status s = SendAll(fd, out, request.idle_timeout); !s.ok()) return s;

  // The head (skipping any 1xx interim responses).
  std::string buffer;
  HttpResponseHead head;
  while (true) {
    const size_t end = buffer.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (buffer.size() > kMaxHeadBytes)
        return absl::DataLossError("the response head is too long");
      absl::StatusOr<std::string> more = ReadSome(fd, request.idle_timeout);
      if (!more.ok()) return more.status();
      if (more->empty()) {
        return absl::DataLossError(
            absl::StrCat(url.Authority(), " closed the connection without an HTTP response"));
      }
      buffer += *more;
      continue;
    }
    absl::StatusOr<HttpResponseHead> parsed = ParseHead(absl::string_view(buffer).substr(0, end));
    if (!parsed.ok()) return parsed.status();
    buffer.erase(0, end + 4);
    if (parsed->status >= 200) {
      head = *std::move(parsed);
      break;
    }
  }
  on_head(head);

  // The body: chunked, Content-Length, or up to the end of the connection.
  const bool chunked =
      absl::StrContains(absl::AsciiStrToLower(head.Header("Transfer-Encoding")), "chunked");
  std::optional<uint64_t> left;
  if (request.method == "HEAD" || head.status == 204 || head.status == 304) {
    left = 0;
  } else if (!chunked) {
    const std::string length = head.Header("Content-Length");
    uint64_t n = 0;
    if (!length.empty()) {
      if (!absl::SimpleAtoi(length, &n)) {
        return absl::DataLossError(absl::StrCat("bad Content-Length '", length, "'"));
      }
      left = n;
    }
  }
  ChunkedDecoder decoder;
  std::string piece;
  while (true) {
    if (chunked) {
      piece.clear();
      if (absl::Status s = decoder.Feed(buffer, &piece); !s.ok()) return s;
      if (!piece.empty() && !on_body(piece)) return absl::OkStatus();
      if (decoder.done()) return absl::OkStatus();
    } else {
      absl::string_view take = buffer;
      if (left.has_value()) {
        take = take.substr(0, static_cast<size_t>(std::min<uint64_t>(*left, take.size())));
        *left -= take.size();
      }
      if (!take.empty() && !on_body(take)) return absl::OkStatus();
      if (left.has_value() && *left == 0) return absl::OkStatus();
    }
    absl::StatusOr<std::string> more = ReadSome(fd, request.idle_timeout);
    if (!more.ok()) return more.status();
    if (more->empty()) {
      if (!chunked && !left.has_value()) return absl::OkStatus();  // close-delimited: the end
      return absl::DataLossError(
          absl::StrCat(url.Authority(), " closed the connection before the response was complete"));
    }
    buffer = *std::move(more);
  }
}

}  // namespace strata::cli
