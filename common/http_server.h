// A small asynchronous HTTP/1.1 server (Boost.Beast on Asio) for every service's HTTP surface:
// the router's OpenAI API, and each worker's /metrics and /healthz. It knows nothing of what it
// serves: a handler gets each request with an HttpExchange and answers through it, at once or
// later from any thread, either with a whole response or with a stream of chunks (SSE).
//
//   HttpServer server({.port = 0, .io_threads = 2},
//                     [](HttpRequest request, std::shared_ptr<HttpExchange> exchange) {
//                       exchange->Respond({.status = 200, .body = "ok"});
//                     });
//   STRATA_RETURN_IF_ERROR(server.Start());
//   ... server.port() ...
//   server.Stop(absl::Seconds(10));
//
// Connections are kept alive (HTTP/1.1 default, or Connection: keep-alive) and serve one request
// at a time: the next request is read once the response to the current one has been written.
// While a response is pending the connection is watched, so a client that goes away is noticed
// and reported through HttpExchange::OnDisconnect (the router cancels the generation).
//
// Limits: a body over `max_body_bytes` gets 413 and the connection is closed; headers over
// `max_header_bytes` get 431; a request not fully received within `request_timeout` (counted
// from the end of the previous response, so it is also the keep-alive idle timeout) closes the
// connection. A stream whose unsent data would pass `max_stream_buffer_bytes` (a client reading
// slower than the producer writes) is cut: the connection is closed and OnDisconnect fires.
// Streams never block the producer, which is why the buffer is bounded rather than pushing back.
//
// Threading: Start, Stop and port may be called from any thread but an io thread, and not
// concurrently with each other. The handler runs on an io thread and must not block. Every
// HttpExchange method may be called from any thread. The server must outlive nothing but its own io
// threads: an exchange that outlives the server is inert (writes are dropped and report false).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: "/v1/models?x=1"
  std::string path;    // target without the query string
  HttpHeaders headers;
  std::string body;
  std::string peer;  // "127.0.0.1:43210"

  // First header named `name` (case-insensitive); empty if absent.
  absl::string_view Header(absl::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  HttpHeaders headers;  // extra headers; Content-Length and Connection are set by the server
  std::string body;
};

namespace internal_http {
class Session;
struct Lifeline;
}  // namespace internal_http

// The answer channel of one request. Exactly one of Respond() or StartStream() … Finish() should
// be used; calls that do not fit (a second Respond, Write before StartStream, anything after the
// response is complete) are ignored. A handler that drops its exchange without answering gets a
// 500 sent for it, so a connection never hangs.
class HttpExchange {
 public:
  ~HttpExchange();
  HttpExchange(const HttpExchange&) = delete;
  HttpExchange& operator=(const HttpExchange&) = delete;

  // A whole response, sent with Content-Length.
  void Respond(HttpResponse response);

  // Sends the status line and headers of a streamed response (chunked transfer encoding; for
  // HTTP/1.0 clients the body is delimited by closing the connection).
  void StartStream(int status, absl::string_view content_type, HttpHeaders headers = {});
  // Queues `data` as the next piece of the stream. Returns false when the client has gone or
  // the buffer limit was passed (the stream is then cut); the caller should stop producing.
  bool Write(std::string data);
  // Ends the stream; the connection then serves the next request (keep-alive) or closes.
  void Finish();

  // `callback` runs once, on an io thread, if the client disconnects (or the connection is cut)
  // before the response is complete; at once on the calling thread if that already happened.
  // It never runs after the response was completely sent, nor once the exchange is destroyed
  // (keep the exchange while you want to hear of a disconnect). It must not block.
  void OnDisconnect(std::function<void()> callback);
  bool disconnected() const { return gone_.load(std::memory_order_acquire); }

 private:
  friend class internal_http::Session;
  enum State { kNew, kStreaming, kDone };

  HttpExchange(uint64_t id, std::weak_ptr<internal_http::Session> session,
               std::shared_ptr<internal_http::Lifeline> lifeline, size_t max_buffered);

  // Runs `fn` on the session's strand; false if the session or the server is gone.
  bool Post(std::function<void(internal_http::Session&)> fn);
  // Called on the session's strand.
  void NotifyDisconnected();
  void Written(size_t bytes) { buffered_.fetch_sub(bytes, std::memory_order_relaxed); }

  const uint64_t id_;  // the request's number on its connection
  const std::weak_ptr<internal_http::Session> session_;
  const std::shared_ptr<internal_http::Lifeline> lifeline_;
  const size_t max_buffered_;
  std::atomic<bool> gone_{false};
  std::atomic<int> state_{kNew};
  std::atomic<size_t> buffered_{0};  // stream bytes queued but not yet written
  absl::Mutex mu_;
  std::function<void()> on_disconnect_ ABSL_GUARDED_BY(mu_);
  bool disconnect_fired_ ABSL_GUARDED_BY(mu_) = false;
};

struct HttpServerOptions {
  std::string address = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port; port() tells which
  int io_threads = 2;
  size_t max_body_bytes = size_t{16} << 20;
  size_t max_header_bytes = size_t{64} << 10;
  size_t max_stream_buffer_bytes = size_t{8} << 20;
  size_t max_connections = 10000;  // more are accepted and closed at once
  absl::Duration request_timeout = absl::Seconds(60);
};

class HttpServer {
 public:
  using Handler = std::function<void(HttpRequest request, std::shared_ptr<HttpExchange> exchange)>;

  HttpServer(HttpServerOptions options, Handler handler);
  ~HttpServer();  // Stop(absl::ZeroDuration()) if still running
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, listens and starts the io threads. Errors: address in use, bad address.
  absl::Status Start();
  // The bound port (after Start).
  uint16_t port() const { return port_; }

  // Stops accepting, closes idle connections, lets responses in progress finish until `grace`
  // has passed, then cuts the rest (their OnDisconnect callbacks run) and joins the io threads.
  void Stop(absl::Duration grace);

  // Open connections (for tests and metrics).
  size_t connections() const;

 private:
  struct Impl;
  const HttpServerOptions options_;
  const Handler handler_;
  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
};

}  // namespace strata
