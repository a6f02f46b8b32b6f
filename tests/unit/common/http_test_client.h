// A blocking HTTP/1.1 client over a plain POSIX socket, for tests of HTTP servers: it writes
// exactly the bytes a test gives it and reads responses piece by piece, so tests can check
// keep-alive, chunk timing, half-sent requests and disconnects. Header-only, test use only.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace strata::testing {

struct TestResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool chunked = false;

  std::string Header(absl::string_view name) const {
    for (const auto& [k, v] : headers) {
      if (absl::EqualsIgnoreCase(k, name)) return v;
    }
    return "";
  }
};

inline std::string MakeRequest(absl::string_view method, absl::string_view path,
                               absl::string_view body = "",
                               std::vector<std::pair<std::string, std::string>> headers = {}) {
  std::string out = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: localhost\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&out, k, ": ", v, "\r\n");
  if (!body.empty() || method == "POST")
    absl::StrAppend(&out, "Content-Length: ", body.size(), "\r\n");
  absl::StrAppend(&out, "\r\n", body);
  return out;
}

class TestConnection {
 public:
  static std::unique_ptr<TestConnection> Connect(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return nullptr;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd);
      return nullptr;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return std::unique_ptr<TestConnection>(new TestConnection(fd));
  }

  ~TestConnection() { Close(); }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Closes with a reset (SO_LINGER 0), the way a killed client goes away.
  void Abort() {
    if (fd_ < 0) return;
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    Close();
  }

  bool Send(absl::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Status line and headers of the next response.
  std::optional<TestResponse> ReadHead(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill(deadline)) return std::nullopt;
    }
    std::string head = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    std::vector<std::string> lines = absl::StrSplit(head, "\r\n");
    TestResponse r;
    std::vector<std::string> first = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
    if (first.size() < 2 || !absl::SimpleAtoi(first[1], &r.status)) return std::nullopt;
    for (size_t i = 1; i < lines.size(); ++i) {
      const size_t colon = lines[i].find(':');
      if (colon == std::string::npos) continue;
      r.headers.emplace_back(lines[i].substr(0, colon),
                             std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1))));
    }
    r.chunked = absl::EqualsIgnoreCase(r.Header("Transfer-Encoding"), "chunked");
    return r;
  }

  // The next chunk of a chunked body ("" at its end), or nullopt on timeout / close.
  std::optional<std::string> ReadChunk(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    size_t eol;
    while ((eol = buffer_.find("\r\n")) == std::string::npos) {
      if (!Fill(deadline)) return std::nullopt;
    }
    size_t size = 0;
    if (!absl::SimpleHexAtoi(absl::string_view(buffer_).substr(0, eol), &size)) return std::nullopt;
    while (buffer_.size() < eol + 2 + size + 2) {
      if (!Fill(deadline)) return std::nullopt;
    }
    std::string data = buffer_.substr(eol + 2, size);
    buffer_.erase(0, eol + 2 + size + 2);
    return data;
  }

  // A whole response: head, then the body by Content-Length or chunks.
  std::optional<TestResponse> ReadResponse(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    std::optional<TestResponse> r = ReadHead(timeout);
    if (!r) return std::nullopt;
    if (r->chunked) {
      for (;;) {
        std::optional<std::string> chunk = ReadChunk(deadline - absl::Now());
        if (!chunk) return std::nullopt;
        if (chunk->empty()) break;
        r->body += *chunk;
      }
      return r;
    }
    size_t length = 0;
    if (!absl::SimpleAtoi(r->Header("Content-Length"), &length)) {
      while (Fill(deadline)) {
      }
      r->body = std::move(buffer_);  // delimited by close
      buffer_.clear();
      return r;
    }
    while (buffer_.size() < length) {
      if (!Fill(deadline)) return std::nullopt;
    }
    r->body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    return r;
  }

  // True when the server closes the connection (EOF or reset) before `timeout`.
  bool WaitClosed(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (Fill(deadline)) buffer_.clear();
    return closed_;
  }

 private:
  explicit TestConnection(int fd) : fd_(fd) {}

  // Reads more bytes; false on timeout, EOF or error (closed_ tells which).
  bool Fill(absl::Time deadline) {
    if (fd_ < 0 || closed_) return false;
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(ms)) <= 0) return false;
    char buf[16384];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) {
      closed_ = true;
      return false;
    }
    buffer_.append(buf, static_cast<size_t>(n));
    return true;
  }

  int fd_;
  bool closed_ = false;
  std::string buffer_;
};

}  // namespace strata::testing
