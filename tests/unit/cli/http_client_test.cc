#include "cli/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace strata::cli {
namespace {

TEST(ParseHttpUrl, HostPortAndBasePath) {
  absl::StatusOr<HttpUrl> url = ParseHttpUrl("http://127.0.0.1:8000");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "127.0.0.1");
  EXPECT_EQ(url->port, 8000);
  EXPECT_EQ(url->base_path, "");

  // The base URL given to OpenAI clients works too: its /v1 is where the API paths start.
  url = ParseHttpUrl("http://localhost:9/v1/");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->port, 9);
  EXPECT_EQ(url->base_path, "");

  url = ParseHttpUrl("http://[::1]:8080/proxy/v1");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->base_path, "/proxy");
  EXPECT_EQ(url->Authority(), "[::1]:8080");

  url = ParseHttpUrl("http://example.org");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->port, 80);
}

TEST(ParseHttpUrl, RejectsWhatItCannotUse) {
  for (const char* bad : {"https://x:1", "127.0.0.1:8000", "http://:80", "http://h:0",
                          "http://h:99999", "http://h:12x", "http://[::1", "http://h/a?b=1"}) {
    EXPECT_FALSE(ParseHttpUrl(bad).ok()) << bad;
  }
  EXPECT_TRUE(absl::StrContains(ParseHttpUrl("https://x").status().message(), "https"));
}

TEST(ChunkedDecoder, DecodesWholeAndByteByByte) {
  const std::string wire = "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nJUNK";
  {
    ChunkedDecoder decoder;
    std::string out;
    ASSERT_TRUE(decoder.Feed(wire, &out).ok());
    EXPECT_EQ(out, "hello, world");
    EXPECT_TRUE(decoder.done());
  }
  // Every split point: chunk sizes, data and CRLFs cut anywhere.
  ChunkedDecoder decoder;
  std::string out;
  for (char c : wire) {
    ASSERT_TRUE(decoder.Feed(std::string(1, c), &out).ok());
  }
  EXPECT_EQ(out, "hello, world");
  EXPECT_TRUE(decoder.done());
}

TEST(ChunkedDecoder, RejectsMalformedBodies) {
  for (const char* bad :
       {"zz\r\nab\r\n", "3\r\nabcX\r\n", "\r\n", "0x3\r\nabc\r\n", "ffffffffffffffffff\r\n"}) {
    ChunkedDecoder decoder;
    std::string out;
    EXPECT_FALSE(decoder.Feed(bad, &out).ok()) << bad;
  }
  ChunkedDecoder decoder;
  std::string out;
  EXPECT_FALSE(decoder.Feed(std::string(10000, '1'), &out).ok());  // an endless size line
}

TEST(SseSplitter, EventsSplitAnywhereAcrossReads) {
  const std::string wire =
      ": keep-alive\r\n\r\n"
      "data: {\"a\":1}\n\n"
      "event: note\r\ndata: line one\r\ndata:line two\r\nid: 7\r\n\r\n"
      "data: [DONE]\n\n"
      "data: never finished";
  for (size_t piece : {wire.size(), size_t{1}, size_t{3}, size_t{7}}) {
    SseSplitter sse;
    std::vector<SseEvent> events;
    for (size_t i = 0; i < wire.size(); i += piece) {
      sse.Feed(wire.substr(i, piece), [&](const SseEvent& e) { events.push_back(e); });
    }
    ASSERT_EQ(events.size(), 3u) << "piece " << piece;
    EXPECT_EQ(events[0].data, "{\"a\":1}");
    EXPECT_EQ(events[0].type, "");
    EXPECT_EQ(events[1].type, "note");
    EXPECT_EQ(events[1].data, "line one\nline two");
    EXPECT_EQ(events[2].data, "[DONE]");
  }
}

bool RequestComplete(const std::string& request) {
  const size_t head_end = request.find("\r\n\r\n");
  if (head_end == std::string::npos) return false;
  size_t length = 0;
  const size_t at = request.find("Content-Length: ");
  if (at != std::string::npos && at < head_end) length = std::stoul(request.substr(at + 16));
  return request.size() >= head_end + 4 + length;
}

// A one-connection server on loopback that answers with `reply` in pieces of `piece` bytes.
class CannedServer {
 public:
  CannedServer(std::string reply, size_t piece) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listen_fd_, 1), 0);
    EXPECT_EQ(getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this, reply = std::move(reply), piece] {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      // Read the whole request before answering: closing with unread bytes would reset the
      // connection and could lose the reply.
      char buf[4096];
      while (!RequestComplete(request_)) {
        const ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) break;
        request_.append(buf, static_cast<size_t>(n));
      }
      for (size_t i = 0; i < reply.size(); i += piece) {
        const std::string part = reply.substr(i, piece);
        if (write(fd, part.data(), part.size()) < 0) break;
        absl::SleepFor(absl::Microseconds(200));  // separate reads on the client side
      }
      close(fd);
    });
  }
  ~CannedServer() {
    if (thread_.joinable()) thread_.join();
    close(listen_fd_);
  }
  int port() const { return port_; }
  // The request as received; waits for the server to finish.
  std::string TakeRequest() {
    thread_.join();
    return request_;
  }

 private:
  int listen_fd_ = -1;
  int port_ = 0;
  std::string request_;
  std::thread thread_;
};

TEST(HttpFetch, StreamsAChunkedSseBody) {
  const std::string body = "data: one\n\ndata: two\n\ndata: [DONE]\n\n";
  std::string wire =
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (size_t i = 0; i < body.size(); i += 9) {
    const std::string part = body.substr(i, 9);
    char size[16];
    std::snprintf(size, sizeof(size), "%zx\r\n", part.size());
    wire += size + part + "\r\n";
  }
  wire += "0\r\n\r\n";
  CannedServer server(wire, 5);
  HttpUrl url{.host = "127.0.0.1", .port = server.port(), .base_path = "/base"};
  HttpClientRequest request{.method = "POST",
                            .path = "/v1/chat/completions",
                            .headers = {{"Authorization", "Bearer k"}},
                            .body = "{}"};
  int status = 0;
  std::string content_type;
  SseSplitter sse;
  std::vector<std::string> events;
  absl::Status s = HttpFetch(
      url, request,
      [&](const HttpResponseHead& head) {
        status = head.status;
        content_type = head.Header("content-type");
      },
      [&](absl::string_view piece) {
        sse.Feed(piece, [&](const SseEvent& e) { events.push_back(e.data); });
        return true;
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(status, 200);
  EXPECT_EQ(content_type, "text/event-stream");
  EXPECT_EQ(events, (std::vector<std::string>{"one", "two", "[DONE]"}));
  const std::string sent = server.TakeRequest();
  EXPECT_TRUE(absl::StartsWith(sent, "POST /base/v1/chat/completions HTTP/1.1\r\n")) << sent;
  EXPECT_TRUE(absl::StrContains(sent, "Authorization: Bearer k\r\n"));
  EXPECT_TRUE(absl::EndsWith(sent, "Content-Length: 2\r\n\r\n{}")) << sent;
}

TEST(HttpFetch, ContentLengthAndErrorStatus) {
  const std::string body = R"({"error":{"message":"bad key"}})";
  CannedServer server("HTTP/1.1 401 Unauthorized\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body,
                      4);
  int status = 0;
  std::string got;
  absl::Status s = HttpFetch(
      {.host = "127.0.0.1", .port = server.port()}, {.path = "/v1/models"},
      [&](const HttpResponseHead& head) { status = head.status; },
      [&](absl::string_view piece) {
        got.append(piece.data(), piece.size());
        return true;
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(status, 401);
  EXPECT_EQ(got, body);
}

TEST(HttpFetch, ResponseCutShortIsAnError) {
  CannedServer server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 64);
  absl::Status s = HttpFetch(
      {.host = "127.0.0.1", .port = server.port()}, {}, [](const HttpResponseHead&) {},
      [](absl::string_view) { return true; });
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
}

TEST(HttpFetch, ConnectionRefusedNamesTheServer) {
  // A port that was just free: bind, note it, close.
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  close(fd);
  absl::Status s = HttpFetch(
      {.host = "127.0.0.1", .port = port}, {}, [](const HttpResponseHead&) {},
      [](absl::string_view) { return true; });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "127.0.0.1:" + std::to_string(port))) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "refused")) << s;
}

}  // namespace
}  // namespace strata::cli
