// Fuzzes the HTTP/1.1 server (common/http_server.h) the way a client reaches it: an input is what
// one client sends on one connection — any number of pipelined requests, then possibly a
// malformed or oversized one — written to a real server on loopback.
//
// Besides ASan and UBSan, it checks what a client relies on. The expected answers come from
// parsing the same bytes with Beast's parser under the server's limits:
//   - the handler sees each request as documented (path = target up to '?', body within limit);
//   - every complete request is answered exactly once, in order, with what the handler chose
//     (status, body, echoed header, Connection), responses to HEAD carry no body;
//   - a malformed request gets 400, a body over the limit 413, headers over the limit 431, and
//     the connection then closes; so does a connection after "Connection: close" or a stream
//     whose buffer overflowed;
//   - everything the server writes parses as HTTP/1.1 responses, and it never hangs.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "boost/asio/buffer.hpp"
#include "boost/beast/http/error.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/string_body.hpp"
#include "common/http_server.h"
#include "spdlog/spdlog.h"

namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;

constexpr size_t kMaxBody = 2048;
constexpr size_t kMaxHeader = 1024;
// Small, so that the fuzzer reaches the cut of a stream whose client reads too slowly.
constexpr size_t kMaxStreamBuffer = 512;
constexpr size_t kStreamPiece = 7;
constexpr int kReadTimeoutMs = 20000;
// Sent after the input when it leaves the connection open, so that the server closes it.
constexpr absl::string_view kLastRequest = "GET /last HTTP/1.1\r\nConnection: close\r\n\r\n";

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "http_request_fuzzer: %s\n", what.c_str());
  std::abort();
}

absl::string_view View(beast::string_view s) { return {s.data(), s.size()}; }

// What the handler does with a request, by its path.
enum class Action { kEcho, kStream, kDrop, kThrow };
Action ActionFor(absl::string_view path) {
  if (absl::StartsWith(path, "/stream")) return Action::kStream;
  if (absl::StartsWith(path, "/drop")) return Action::kDrop;
  if (absl::StartsWith(path, "/throw")) return Action::kThrow;
  return Action::kEcho;
}

// kEcho: 200 with the body and the x-echo header sent back. kStream: the body streamed back in
// small pieces (so a body over kMaxStreamBuffer overflows the stream's buffer). kDrop: dropped
// unanswered, kThrow: throws (the server answers 500 for both).
void Handle(strata::HttpRequest request, std::shared_ptr<strata::HttpExchange> exchange) {
  if (request.method.empty()) Fail("handler got a request without a method");
  if (request.path != request.target.substr(0, request.target.find('?'))) {
    Fail("path '" + request.path + "' is not target '" + request.target + "' up to '?'");
  }
  if (request.body.size() > kMaxBody) Fail("handler got a body over the limit");
  strata::HttpHeaders headers;
  if (absl::string_view echo = request.Header("x-echo"); !echo.empty()) {
    headers.emplace_back("X-Echo", std::string(echo));
  }
  switch (ActionFor(request.path)) {
    case Action::kEcho:
      exchange->Respond({.status = 200, .headers = std::move(headers), .body = request.body});
      return;
    case Action::kStream:
      exchange->StartStream(200, "text/event-stream", std::move(headers));
      for (size_t i = 0; i < request.body.size(); i += kStreamPiece) {
        if (!exchange->Write(request.body.substr(i, kStreamPiece))) break;
      }
      exchange->Finish();
      return;
    case Action::kDrop:
      return;
    case Action::kThrow:
      throw std::runtime_error("handler failure");
  }
}

strata::HttpServer& Server() {
  static strata::HttpServer* server = [] {
    spdlog::set_level(spdlog::level::off);  // the server warns about dropped requests
    auto* s = new strata::HttpServer({.port = 0,
                                      .io_threads = 1,
                                      .max_body_bytes = kMaxBody,
                                      .max_header_bytes = kMaxHeader,
                                      .max_stream_buffer_bytes = kMaxStreamBuffer,
                                      .request_timeout = absl::Seconds(60)},
                                     Handle);
    if (absl::Status status = s->Start(); !status.ok()) Fail(std::string(status.message()));
    return s;
  }();
  return *server;
}

// One answer the client should get.
struct Expected {
  int status = 200;
  bool head = false;        // a response to HEAD: no body
  bool closes = false;      // the connection ends after it
  bool may_be_cut = false;  // a stream over the buffer limit: cut short (or not sent at all)
  bool check_body = false;  // the body must equal `body`
  std::string body;
  std::string echo;  // the X-Echo header it must carry ("" : none)
};

// Splits `input` the way the server's parser will and says what the server must answer. Returns
// the bytes to send: `input`, cut after its last complete request and followed by kLastRequest
// when it would leave the connection waiting.
std::string Plan(absl::string_view input, std::vector<Expected>* expected) {
  size_t pos = 0;
  while (true) {
    http::request_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(kMaxBody);
    parser.header_limit(static_cast<uint32_t>(kMaxHeader));
    beast::error_code ec;
    size_t used = 0;
    while (!parser.is_done()) {
      if (pos + used == input.size()) {
        ec = http::error::need_more;
        break;
      }
      const size_t n =
          parser.put(boost::asio::buffer(input.data() + pos + used, input.size() - pos - used), ec);
      used += n;
      if (ec) break;
    }
    if (ec == http::error::need_more) {
      // The input ends inside a request (or is used up): the server would wait for the rest.
      Expected e;
      e.closes = e.check_body = true;
      expected->push_back(std::move(e));
      return absl::StrCat(input.substr(0, pos), kLastRequest);
    }
    if (ec) {
      Expected e;
      e.status = ec == http::error::body_limit ? 413 : ec == http::error::header_limit ? 431 : 400;
      e.closes = true;
      expected->push_back(std::move(e));
      // Beast finds a bad field in a header whose end has not arrived only if it parses the
      // header in one piece; the server, reading in pieces, rightly waits for the end. End it.
      std::string sent(input);
      if (!parser.is_header_done() && ec != http::error::header_limit &&
          input.substr(pos).find("\r\n\r\n") == absl::string_view::npos) {
        sent += "\r\n\r\n";
      }
      return sent;
    }
    pos += used;
    const auto& request = parser.get();
    const absl::string_view target = View(request.target());
    const absl::string_view path = target.substr(0, target.find('?'));
    Expected e;
    e.head = request.method() == http::verb::head;
    e.closes = !request.keep_alive();
    e.echo = std::string(View(request["x-echo"]));
    switch (ActionFor(path)) {
      case Action::kEcho:
        e.check_body = !e.head;
        e.body = request.body();
        break;
      case Action::kStream:
        e.check_body = !e.head;
        e.body = request.body();
        if (request.version() < 11) e.closes = true;  // the body ends where the connection does
        if (request.body().size() > kMaxStreamBuffer) e.may_be_cut = e.closes = true;
        break;
      case Action::kDrop:
      case Action::kThrow:
        e.status = 500;
        e.echo.clear();
        break;
    }
    const bool closes = e.closes;
    expected->push_back(std::move(e));
    // The server reads (and discards) what follows a closing request: send it all the same.
    if (closes) return std::string(input);
  }
}

int Connect(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Fail("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    Fail(std::string("connect failed: ") + std::strerror(errno));
  }
  return fd;
}

// Sends `data`; stops quietly if the server closed the connection first (it may, after an
// error or a closing request, before it has read everything).
void SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// Everything the server sends until it closes the connection.
std::string ReceiveAll(int fd) {
  std::string out;
  char buf[16384];
  while (true) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    const int ready = ::poll(&p, 1, kReadTimeoutMs);
    if (ready == 0) Fail("the server neither answered nor closed the connection");
    if (ready < 0 && errno == EINTR) continue;
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;  // closed (or reset after lingering: what arrived is what counts)
    out.append(buf, static_cast<size_t>(n));
  }
}

// Parses what the server sent as the responses `expected` lists.
void CheckResponses(absl::string_view received, const std::vector<Expected>& expected) {
  size_t pos = 0, index = 0;
  while (pos < received.size()) {
    if (index == expected.size()) {
      Fail("the server sent more than the " + std::to_string(expected.size()) +
           " responses expected: " + std::string(received.substr(pos, 200)));
    }
    const Expected& want = expected[index];
    http::response_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(boost::none);
    parser.skip(want.head);
    beast::error_code ec;
    while (!parser.is_done()) {
      // Everything the server sent is here: once it is used up, the rest of this response is
      // the connection's end (a body delimited by it, as HTTP/1.0 streams are) or never came.
      if (pos == received.size()) {
        parser.put_eof(ec);
        break;
      }
      const size_t n =
          parser.put(boost::asio::buffer(received.data() + pos, received.size() - pos), ec);
      pos += n;
      if (ec == http::error::need_more) {
        parser.put_eof(ec);
        break;
      }
      if (ec) break;
    }
    if (ec) {
      if (want.may_be_cut && index + 1 == expected.size()) return;  // the stream was cut
      Fail("response " + std::to_string(index) + " does not parse: " + ec.message());
    }
    const auto& response = parser.get();
    const int status = static_cast<int>(response.result_int());
    if (status == 100) continue;  // 100 Continue before the real answer
    if (status != want.status) {
      Fail("response " + std::to_string(index) + " is " + std::to_string(status) + ", want " +
           std::to_string(want.status));
    }
    // A cut HTTP/1.0 stream looks complete (its body ends where the connection does): it
    // must hold a prefix of the body.
    if (want.may_be_cut && want.check_body && !absl::StartsWith(want.body, response.body())) {
      Fail("response " + std::to_string(index) + " is cut with a body not the start of '" +
           want.body + "'");
    }
    if (want.check_body && !want.may_be_cut && response.body() != want.body) {
      Fail("response " + std::to_string(index) + " has body '" + response.body() + "', want '" +
           want.body + "'");
    }
    if (want.head && !response.body().empty()) Fail("a response to HEAD has a body");
    if (View(response["x-echo"]) != want.echo) {
      Fail("response " + std::to_string(index) + " echoes '" +
           std::string(View(response["x-echo"])) + "', want '" + want.echo + "'");
    }
    const bool says_close = absl::EqualsIgnoreCase(View(response["connection"]), "close");
    if (says_close != want.closes && !want.may_be_cut) {
      Fail("response " + std::to_string(index) +
           " says Connection: " + std::string(View(response["connection"])) +
           " but the connection " + (want.closes ? "closes" : "stays open"));
    }
    ++index;
  }
  const bool last_cut = !expected.empty() && expected.back().may_be_cut;
  if (index != expected.size() && !(last_cut && index + 1 == expected.size())) {
    Fail("the server sent " + std::to_string(index) + " responses, want " +
         std::to_string(expected.size()));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  strata::HttpServer& server = Server();
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<Expected> expected;
  const std::string sent = Plan(input, &expected);
  const int fd = Connect(server.port());
  SendAll(fd, sent);
  const std::string received = ReceiveAll(fd);
  ::close(fd);
  CheckResponses(received, expected);
  return 0;
}
