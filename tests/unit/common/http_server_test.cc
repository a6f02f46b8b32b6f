// HttpServer over real loopback sockets: keep-alive, streaming from another thread, disconnects,
// limits and graceful stop.
#include "common/http_server.h"

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/unit/common/http_test_client.h"

namespace strata {
namespace {

using testing::MakeRequest;
using testing::TestConnection;

constexpr absl::Duration kWait = absl::Seconds(10);

// Echoes "<method> <path> <body>" for ordinary paths; tests override the rest.
void Echo(const HttpRequest& request, HttpExchange& exchange) {
  exchange.Respond(
      {.status = 200, .body = absl::StrCat(request.method, " ", request.path, " ", request.body)});
}

std::unique_ptr<HttpServer> StartServer(HttpServer::Handler handler,
                                        HttpServerOptions options = {}) {
  auto server = std::make_unique<HttpServer>(options, std::move(handler));
  EXPECT_TRUE(server->Start().ok());
  EXPECT_NE(server->port(), 0);
  return server;
}

TEST(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  auto server = StartServer([](HttpRequest r, std::shared_ptr<HttpExchange> e) { Echo(r, *e); });
  auto conn = TestConnection::Connect(server->port());
  ASSERT_NE(conn, nullptr);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(conn->Send(MakeRequest("POST", absl::StrCat("/echo/", i, "?q=1"), "hello")));
    auto r = conn->ReadResponse();
    ASSERT_TRUE(r.has_value()) << "request " << i;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, absl::StrCat("POST /echo/", i, " hello"));
    EXPECT_EQ(r->Header("Connection"), "keep-alive");
  }
  // Two requests sent back to back (pipelined) are both answered, in order.
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/a") + MakeRequest("GET", "/b")));
  auto a = conn->ReadResponse();
  auto b = conn->ReadResponse();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->body, "GET /a ");
  EXPECT_EQ(b->body, "GET /b ");
  EXPECT_EQ(server->connections(), 1u);

  // Connection: close is honoured.
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/last", "", {{"Connection", "close"}})));
  auto last = conn->ReadResponse();
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->Header("Connection"), "close");
  EXPECT_TRUE(conn->WaitClosed());
}

TEST(HttpServerTest, StreamsChunksWrittenFromAnotherThread) {
  absl::Notification release_second;
  std::vector<std::thread> producers;
  absl::Mutex mu;
  auto server = StartServer([&](HttpRequest r, std::shared_ptr<HttpExchange> e) {
    if (r.path != "/stream") return Echo(r, *e);
    e->StartStream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
    absl::MutexLock lock(&mu);
    producers.emplace_back([e, &release_second] {
      EXPECT_TRUE(e->Write("data: one\n\n"));
      release_second.WaitForNotification();
      EXPECT_TRUE(e->Write("data: two\n\n"));
      EXPECT_TRUE(e->Write(""));  // empty writes are ignored, not a terminator
      e->Finish();
      EXPECT_FALSE(e->Write("late")) << "writes after Finish are refused";
    });
  });
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/stream")));
  auto head = conn->ReadHead();
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->chunked);
  EXPECT_EQ(head->Header("Content-Type"), "text/event-stream");
  EXPECT_EQ(head->Header("Cache-Control"), "no-cache");
  // The first chunk arrives while the producer is still blocked before the second.
  EXPECT_EQ(conn->ReadChunk(), "data: one\n\n");
  release_second.Notify();
  EXPECT_EQ(conn->ReadChunk(), "data: two\n\n");
  EXPECT_EQ(conn->ReadChunk(), "");
  // The connection serves the next request after the stream.
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/after")));
  auto after = conn->ReadResponse();
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->body, "GET /after ");
  absl::MutexLock lock(&mu);
  for (auto& t : producers) t.join();
}

TEST(HttpServerTest, ClientDisconnectIsReportedWhileWaitingAndWhileStreaming) {
  absl::Notification waiting_gone, streaming_gone, streaming_started;
  std::shared_ptr<HttpExchange> held_wait, held_stream;
  absl::Mutex mu;
  auto server = StartServer([&](HttpRequest r, std::shared_ptr<HttpExchange> e) {
    absl::MutexLock lock(&mu);
    if (r.path == "/wait") {
      e->OnDisconnect([&] { waiting_gone.Notify(); });
      held_wait = e;
    } else {
      e->StartStream(200, "text/event-stream");
      e->Write("data: x\n\n");
      e->OnDisconnect([&] { streaming_gone.Notify(); });
      held_stream = e;
      streaming_started.Notify();
    }
  });
  auto waiter = TestConnection::Connect(server->port());
  ASSERT_TRUE(waiter->Send(MakeRequest("POST", "/wait", "{}")));
  auto streamer = TestConnection::Connect(server->port());
  ASSERT_TRUE(streamer->Send(MakeRequest("GET", "/stream")));
  ASSERT_TRUE(streaming_started.WaitForNotificationWithTimeout(kWait));
  ASSERT_TRUE(streamer->ReadHead().has_value());

  waiter->Close();  // orderly close (FIN)
  EXPECT_TRUE(waiting_gone.WaitForNotificationWithTimeout(kWait));
  streamer->Abort();  // reset (RST)
  EXPECT_TRUE(streaming_gone.WaitForNotificationWithTimeout(kWait));

  absl::MutexLock lock(&mu);
  EXPECT_TRUE(held_stream->disconnected());
  EXPECT_FALSE(held_stream->Write("more")) << "writes to a gone client report false";
  // A callback registered after the fact runs at once.
  bool ran = false;
  held_wait->OnDisconnect([&] { ran = true; });
  EXPECT_TRUE(ran);
  held_wait->Respond({.status = 200});  // ignored, must not crash
}

TEST(HttpServerTest, OversizeBodyGets413AndTheConnectionCloses) {
  auto server = StartServer([](HttpRequest r, std::shared_ptr<HttpExchange> e) { Echo(r, *e); },
                            {.max_body_bytes = 1024});
  {
    auto conn = TestConnection::Connect(server->port());
    ASSERT_TRUE(conn->Send(MakeRequest("POST", "/ok", std::string(1024, 'a'))));
    auto r = conn->ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 200);
  }
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send(MakeRequest("POST", "/big", std::string(4096, 'a'))));
  auto r = conn->ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 413);
  EXPECT_NE(r->body.find("larger than the limit of 1024 bytes"), std::string::npos) << r->body;
  EXPECT_EQ(r->Header("Connection"), "close");
  EXPECT_TRUE(conn->WaitClosed());
}

TEST(HttpServerTest, MalformedRequestGets400AndExpectContinueIsHonoured) {
  auto server = StartServer([](HttpRequest r, std::shared_ptr<HttpExchange> e) { Echo(r, *e); });
  {
    auto conn = TestConnection::Connect(server->port());
    ASSERT_TRUE(conn->Send("GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n"));
    auto r = conn->ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 400);
  }
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send(
      "POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"));
  auto cont = conn->ReadHead();
  ASSERT_TRUE(cont.has_value());
  EXPECT_EQ(cont->status, 100);
  ASSERT_TRUE(conn->Send("hello"));
  auto r = conn->ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "POST /up hello");
}

// A response to HEAD has its head only, whatever its Content-Length or Transfer-Encoding says, so
// the next response on the connection is read right (found by tests/fuzz/http_request_fuzzer).
TEST(HttpServerTest, ResponsesToHeadHaveNoBody) {
  auto server = StartServer([](HttpRequest r, std::shared_ptr<HttpExchange> e) {
    if (r.path != "/stream") return Echo(r, *e);
    e->StartStream(200, "text/event-stream");
    e->Write("data: x\n\n");
    e->Finish();
  });
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send(MakeRequest("HEAD", "/echo") + MakeRequest("HEAD", "/stream") +
                         MakeRequest("GET", "/after")));
  auto head = conn->ReadHead();
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->Header("Content-Length"), "11");  // "HEAD /echo "
  auto stream = conn->ReadHead();
  ASSERT_TRUE(stream.has_value());
  EXPECT_TRUE(stream->chunked);
  auto after = conn->ReadResponse();
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->body, "GET /after ");
}

// An HTTP/1.0 stream ends where the connection does, and its head says so even when the client
// asked to keep the connection alive (found by the http_request fuzzer).
TEST(HttpServerTest, Http10StreamSaysConnectionClose) {
  auto server = StartServer([](HttpRequest, std::shared_ptr<HttpExchange> e) {
    e->StartStream(200, "text/event-stream");
    e->Write("data: x\n\n");
    e->Finish();
  });
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send("GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  auto r = conn->ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->Header("Connection"), "close");
  EXPECT_EQ(r->body, "data: x\n\n");
  EXPECT_TRUE(conn->WaitClosed());
}

TEST(HttpServerTest, DroppedExchangeGets500) {
  auto server = StartServer([](HttpRequest, std::shared_ptr<HttpExchange>) {});
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/nothing")));
  auto r = conn->ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 500);
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/again")));
  EXPECT_TRUE(conn->ReadResponse().has_value()) << "the connection is still usable";
}

TEST(HttpServerTest, SlowReaderIsCutInsteadOfBufferingWithoutLimit) {
  absl::Notification gone, refused;
  std::thread producer;
  std::shared_ptr<HttpExchange> held;  // a producer keeps its exchange until it is done
  auto server = StartServer(
      [&](HttpRequest, std::shared_ptr<HttpExchange> e) {
        held = e;
        e->StartStream(200, "application/octet-stream");
        e->OnDisconnect([&] { gone.Notify(); });
        producer = std::thread([e, &refused] {
          const std::string piece(64 << 10, 'x');
          for (int i = 0; i < 4096; ++i) {  // 256 MiB at most: far past any socket buffer
            if (!e->Write(piece)) {
              refused.Notify();
              return;
            }
          }
        });
      },
      {.max_stream_buffer_bytes = 1 << 20});
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/flood")));  // and never read
  EXPECT_TRUE(refused.WaitForNotificationWithTimeout(kWait));
  EXPECT_TRUE(gone.WaitForNotificationWithTimeout(kWait));
  producer.join();
}

TEST(HttpServerTest, StopClosesIdleConnectionsAndLetsInFlightResponsesFinish) {
  absl::Notification in_flight;
  std::shared_ptr<HttpExchange> held;
  absl::Mutex mu;
  auto server = StartServer([&](HttpRequest r, std::shared_ptr<HttpExchange> e) {
    if (r.path != "/slow") return Echo(r, *e);
    absl::MutexLock lock(&mu);
    held = e;
    in_flight.Notify();
  });
  const uint16_t port = server->port();
  auto idle = TestConnection::Connect(port);
  ASSERT_TRUE(idle->Send(MakeRequest("GET", "/quick")));
  ASSERT_TRUE(idle->ReadResponse().has_value());
  auto busy = TestConnection::Connect(port);
  ASSERT_TRUE(busy->Send(MakeRequest("GET", "/slow")));
  ASSERT_TRUE(in_flight.WaitForNotificationWithTimeout(kWait));

  std::thread stopper([&] { server->Stop(absl::Seconds(30)); });
  EXPECT_TRUE(idle->WaitClosed()) << "idle keep-alive connections close at once";
  EXPECT_EQ(TestConnection::Connect(port), nullptr) << "no longer accepting";
  {
    absl::MutexLock lock(&mu);
    held->Respond({.status = 200, .body = "finished"});
  }
  auto r = busy->ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "finished");
  EXPECT_EQ(r->Header("Connection"), "close");
  stopper.join();  // returns once the in-flight response is out, well before 30 s
  EXPECT_EQ(server->connections(), 0u);
}

TEST(HttpServerTest, StopCutsResponsesStillRunningAtTheDeadline) {
  absl::Notification in_flight, cut;
  std::shared_ptr<HttpExchange> held;
  auto server = StartServer([&](HttpRequest, std::shared_ptr<HttpExchange> e) {
    e->OnDisconnect([&] { cut.Notify(); });
    held = e;
    in_flight.Notify();
  });
  auto conn = TestConnection::Connect(server->port());
  ASSERT_TRUE(conn->Send(MakeRequest("GET", "/forever")));
  ASSERT_TRUE(in_flight.WaitForNotificationWithTimeout(kWait));
  server->Stop(absl::Milliseconds(50));
  EXPECT_TRUE(cut.HasBeenNotified()) << "the handler learns its response was cut";
  EXPECT_TRUE(conn->WaitClosed());
  held->Respond({.status = 200});  // after Stop: inert
  held.reset();
  server.reset();
}

TEST(HttpServerTest, StartFailsOnAPortInUse) {
  auto first = StartServer([](HttpRequest r, std::shared_ptr<HttpExchange> e) { Echo(r, *e); });
  HttpServer second({.port = first->port()}, [](HttpRequest, std::shared_ptr<HttpExchange>) {});
  absl::Status status = second.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(absl::StrCat(first->port())), absl::string_view::npos) << status;
}

}  // namespace
}  // namespace strata
