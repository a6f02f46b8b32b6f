#include "common/http_server.h"

#include <deque>
#include <optional>
#include <thread>
#include <unordered_map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "boost/asio/bind_executor.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/http/error.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/read.hpp"
#include "boost/beast/http/status.hpp"
#include "boost/beast/http/string_body.hpp"
#include "spdlog/spdlog.h"

namespace strata {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

// How long a connection that is being closed keeps reading (and discarding) what the client
// still sends, so the client sees our response instead of a reset (nginx's lingering close).
constexpr auto kLingerTimeout = std::chrono::seconds(2);
// While a response is pending the connection is read only to notice a disconnect; bytes a
// pipelining client sends meanwhile are kept for the next request, up to this much.
constexpr size_t kMaxWatchedBytes = 64 << 10;
constexpr size_t kWatchReadBytes = 4096;

// Header names and values come from handlers; a CR or LF would split the response.
std::string Sanitize(absl::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == '\r' || c == '\n') c = ' ';
  }
  return out;
}

std::string StatusLine(int status) {
  const beast::string_view reason = http::obsolete_reason(static_cast<http::status>(status));
  return absl::StrCat("HTTP/1.1 ", status, " ",
                      reason.empty() ? absl::string_view("Unknown")
                                     : absl::string_view(reason.data(), reason.size()),
                      "\r\n");
}

std::string ErrorBody(absl::string_view message) {
  // Server-generated errors (before any handler ran) use the same JSON shape as OpenAI's errors;
  // it is a fine generic shape for the other services too.
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped.push_back('\\');
    if (static_cast<unsigned char>(c) < 0x20) continue;
    escaped.push_back(c);
  }
  return absl::StrCat(R"({"error":{"message":")", escaped,
                      R"(","type":"invalid_request_error","param":null,"code":null}})", "\n");
}

}  // namespace

absl::string_view HttpRequest::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return {};
}

namespace internal_http {

// Exchanges post onto their connection only while the server lives; Stop() flips this under the
// writer lock, so no post can race with the io_context's destruction.
struct Lifeline {
  absl::Mutex mu;
  bool alive ABSL_GUARDED_BY(mu) = true;
};

class Session;

// What sessions share with the server that owns them.
struct ServerCore {
  ServerCore(const HttpServerOptions& o, const HttpServer::Handler& h) : options(o), handler(h) {}

  const HttpServerOptions& options;
  const HttpServer::Handler& handler;
  std::shared_ptr<Lifeline> lifeline = std::make_shared<Lifeline>();
  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions ABSL_GUARDED_BY(mu);

  bool Register(const std::shared_ptr<Session>& s) {
    absl::MutexLock lock(&mu);
    if (stopping || sessions.size() >= options.max_connections) return false;
    sessions.emplace(s.get(), s);
    return true;
  }
  void Deregister(Session* s) {
    absl::MutexLock lock(&mu);
    sessions.erase(s);
  }
  bool is_stopping() {
    absl::MutexLock lock(&mu);
    return stopping;
  }
};

// One connection. Every member is used only on the connection's strand (the socket's executor).
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, ServerCore& core)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), core_(core) {
    beast::error_code ec;
    const tcp::endpoint remote = socket_.remote_endpoint(ec);
    if (!ec) peer_ = absl::StrCat(remote.address().to_string(), ":", remote.port());
  }

  net::any_io_executor executor() { return socket_.get_executor(); }

  void Start() { DoRead(); }

  // Server stopping: idle connections close now, busy ones after their response.
  void StopGracefully() {
    keep_alive_ = false;
    if (phase_ == Phase::kReading || phase_ == Phase::kIdle) Close();
  }

  void Close() {
    if (phase_ == Phase::kClosed) return;
    const Phase was = phase_;
    phase_ = Phase::kClosed;
    CancelTimer();
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    std::shared_ptr<HttpExchange> exchange = exchange_.lock();
    exchange_.reset();
    if (exchange != nullptr &&
        (was == Phase::kHandling || was == Phase::kStreaming || was == Phase::kFlushing)) {
      exchange->NotifyDisconnected();
    }
    core_.Deregister(this);
    hold_.reset();  // may release the last reference; callers hold their own
  }

  // ---- what HttpExchange posts (ignored unless `id` is the request being answered) ----------

  void Respond(uint64_t id, HttpResponse response) {
    if (id != current_id_ || phase_ != Phase::kHandling) return;
    std::string out = Head(response.status, response.content_type, response.headers);
    absl::StrAppend(&out, "Content-Length: ", response.body.size(), "\r\n\r\n");
    if (!head_) out += response.body;  // a response to HEAD has no body, whatever its headers say
    Enqueue(std::move(out), 0);
    phase_ = Phase::kFlushing;
    DoWrite();
  }

  void StartStream(uint64_t id, int status, const std::string& content_type,
                   const HttpHeaders& headers) {
    if (id != current_id_ || phase_ != Phase::kHandling) return;
    // An HTTP/1.0 body ends where the connection does: say so in the head (Connection: close).
    if (http10_) keep_alive_ = false;
    std::string out = Head(status, content_type, headers);
    if (!http10_) out += "Transfer-Encoding: chunked\r\n";
    out += "\r\n";
    Enqueue(std::move(out), 0);
    phase_ = Phase::kStreaming;
    DoWrite();
  }

  void WriteChunk(uint64_t id, std::string data) {
    const size_t size = data.size();
    if (id != current_id_ || phase_ != Phase::kStreaming) {
      if (auto exchange = exchange_.lock(); exchange != nullptr && id == current_id_) {
        exchange->Written(size);
      }
      return;
    }
    if (size == 0) return;  // an empty chunk would end a chunked body
    if (head_) {  // a response to HEAD has no body: the stream's data is dropped
      if (auto exchange = exchange_.lock()) exchange->Written(size);
      return;
    }
    if (http10_) {
      Enqueue(std::move(data), size);
    } else {
      Enqueue(absl::StrCat(absl::Hex(size), "\r\n", data, "\r\n"), size);
    }
    DoWrite();
  }

  void Finish(uint64_t id) {
    if (id != current_id_ || phase_ != Phase::kStreaming) return;
    if (!http10_ && !head_) Enqueue("0\r\n\r\n", 0);
    phase_ = Phase::kFlushing;
    if (!writing_ && out_.empty()) {
      ResponseDone();
    } else {
      DoWrite();
    }
  }

  // The handler dropped its exchange without completing the response.
  void Abandon(uint64_t id) {
    if (id != current_id_) return;
    if (phase_ == Phase::kHandling) {
      spdlog::warn("http {}: {} {}: the handler dropped the request without answering", peer_,
                   method_, path_);
      SendError(500, "the server dropped this request without an answer", keep_alive_);
    } else if (phase_ == Phase::kStreaming) {
      Close();  // no terminating chunk: the client learns the body is incomplete
    }
  }

  // The stream's buffer overflowed (the client reads too slowly).
  void Cut(uint64_t id) {
    if (id != current_id_ || phase_ != Phase::kStreaming) return;
    spdlog::warn("http {}: {} {}: client too slow, {} bytes unsent; closing", peer_, method_, path_,
                 core_.options.max_stream_buffer_bytes);
    Close();
  }

 private:
  enum class Phase {
    kReading,    // reading a request
    kHandling,   // the handler has the request; nothing sent yet
    kStreaming,  // headers sent, chunks flowing
    kFlushing,   // the whole response is queued; waiting for it to be written
    kIdle,       // keep-alive: a watch read waits for the next request's first bytes
    kLingering,  // closing: draining what the client still sends
    kClosed,
  };

  struct Piece {
    std::string data;
    size_t accounted;  // stream bytes this piece carries (HttpExchange's buffer accounting)
  };

  std::string Head(int status, absl::string_view content_type, const HttpHeaders& headers) {
    std::string out = StatusLine(status);
    if (!content_type.empty())
      absl::StrAppend(&out, "Content-Type: ", Sanitize(content_type), "\r\n");
    for (const auto& [name, value] : headers) {
      absl::StrAppend(&out, Sanitize(name), ": ", Sanitize(value), "\r\n");
    }
    if (core_.is_stopping()) keep_alive_ = false;
    absl::StrAppend(&out, "Connection: ", keep_alive_ ? "keep-alive" : "close", "\r\n");
    return out;
  }

  void ArmTimer(std::chrono::steady_clock::duration d) {
    const uint64_t generation = ++timer_generation_;
    timer_.expires_after(d);
    timer_.async_wait([self = shared_from_this(), generation](beast::error_code ec) {
      if (ec || generation != self->timer_generation_) return;
      self->Close();
    });
  }
  void CancelTimer() {
    ++timer_generation_;
    timer_.cancel();
  }

  void DoRead() {
    phase_ = Phase::kReading;
    head_ = false;  // an error answered before the next request is parsed has its body
    parser_.emplace();
    parser_->body_limit(core_.options.max_body_bytes);
    parser_->header_limit(static_cast<uint32_t>(core_.options.max_header_bytes));
    ArmTimer(absl::ToChronoNanoseconds(core_.options.request_timeout));
    http::async_read_header(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(beast::error_code ec) {
    if (phase_ != Phase::kReading) return;
    if (ec || parser_->is_done()) return OnRead(ec);
    const auto& req = parser_->get();
    if (absl::EqualsIgnoreCase(ToAbslView(req[http::field::expect]), "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(socket_, net::buffer(kContinue),
                       [self = shared_from_this()](beast::error_code ec, size_t) {
                         if (ec) return self->Close();
                         self->ReadBody();
                       });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    http::async_read(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (phase_ != Phase::kReading) return;
    CancelTimer();
    if (ec == http::error::body_limit) {
      return SendError(413,
                       absl::StrCat("the request body is larger than the limit of ",
                                    core_.options.max_body_bytes, " bytes"),
                       false);
    }
    if (ec == http::error::header_limit) {
      return SendError(431, "the request headers are too large", false);
    }
    if (ec) {
      const bool parse_error =
          ec.category() == http::make_error_code(http::error::bad_target).category() &&
          ec != http::error::end_of_stream && ec != http::error::partial_message;
      if (parse_error) {
        return SendError(400, absl::StrCat("malformed HTTP request: ", ec.message()), false);
      }
      return Close();  // the client went away, or the timer closed the socket
    }

    auto message = parser_->release();
    parser_.reset();
    HttpRequest request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    request.path = request.target.substr(0, request.target.find('?'));
    for (const auto& field : message) {
      request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    request.body = std::move(message.body());
    request.peer = peer_;
    method_ = request.method;
    path_ = request.path;
    http10_ = message.version() < 11;
    head_ = message.method() == http::verb::head;
    keep_alive_ = message.keep_alive() && !core_.is_stopping();

    phase_ = Phase::kHandling;
    current_id_ = ++last_id_;
    std::shared_ptr<HttpExchange> exchange(new HttpExchange(
        current_id_, weak_from_this(), core_.lifeline, core_.options.max_stream_buffer_bytes));
    exchange_ = exchange;
    hold_ = shared_from_this();  // alive while the handler works, even with no read pending
    Watch();
    try {
      core_.handler(std::move(request), std::move(exchange));
    } catch (const std::exception& e) {
      spdlog::error("http {}: {} {}: handler threw: {}", peer_, method_, path_, e.what());
      if (phase_ == Phase::kHandling) SendError(500, "internal error", keep_alive_);
    }
  }

  static absl::string_view ToAbslView(beast::string_view s) { return {s.data(), s.size()}; }

  // A response the server writes itself (the request never reached a handler, or was dropped).
  void SendError(int status, absl::string_view message, bool keep_alive) {
    if (!keep_alive) keep_alive_ = false;
    if (phase_ == Phase::kReading) {
      phase_ = Phase::kHandling;
      current_id_ = ++last_id_;
      if (!watching_) Watch();
    }
    Respond(current_id_,
            HttpResponse{
                .status = status, .content_type = "application/json", .body = ErrorBody(message)});
  }

  // A read that notices the client closing while nothing else reads: during a response, when
  // idle between requests, and while lingering before close. Data it gets is kept in buffer_
  // for the next request (or discarded when lingering).
  void Watch() {
    if (watching_ || phase_ == Phase::kClosed) return;
    if (phase_ != Phase::kLingering && buffer_.size() >= kMaxWatchedBytes) return;
    watching_ = true;
    socket_.async_read_some(
        buffer_.prepare(kWatchReadBytes),
        [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnWatch(ec, n); });
  }

  void OnWatch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (phase_ == Phase::kClosed) return;
    if (ec == net::error::operation_aborted && phase_ == Phase::kIdle) {
      return DoRead();  // ResponseDone cancelled the watch: a pipelined request is buffered
    }
    if (ec) return Close();
    buffer_.commit(n);
    switch (phase_) {
      case Phase::kLingering:
        buffer_.consume(buffer_.size());
        return Watch();
      case Phase::kIdle:
        return DoRead();
      default:
        return Watch();
    }
  }

  void Enqueue(std::string data, size_t accounted) {
    out_.push_back(Piece{std::move(data), accounted});
  }

  void DoWrite() {
    if (writing_ || out_.empty() || phase_ == Phase::kClosed) return;
    writing_ = true;
    in_flight_.swap(out_);
    std::vector<net::const_buffer> buffers;
    buffers.reserve(in_flight_.size());
    for (const Piece& p : in_flight_) buffers.emplace_back(net::buffer(p.data));
    net::async_write(socket_, buffers, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->OnWrite(ec);
    });
  }

  void OnWrite(beast::error_code ec) {
    writing_ = false;
    if (auto exchange = exchange_.lock()) {
      for (const Piece& p : in_flight_) exchange->Written(p.accounted);
    }
    in_flight_.clear();
    if (phase_ == Phase::kClosed) return;
    if (ec) return Close();
    if (!out_.empty()) return DoWrite();
    if (phase_ == Phase::kFlushing) ResponseDone();
  }

  void ResponseDone() {
    exchange_.reset();  // complete: its OnDisconnect callback will never run
    hold_.reset();      // the write handler running us holds a reference
    if (!keep_alive_ || core_.is_stopping()) {
      // Close our side, then drain until the client closes too (or the linger timer fires).
      // Lingering matters only when the client sent more than we read: closing a socket with
      // unread bytes makes the kernel send a reset, which can destroy the response in flight.
      beast::error_code ec;
      socket_.shutdown(tcp::socket::shutdown_send, ec);
      const size_t unread = ec ? 0 : socket_.available(ec);
      if (!ec && unread == 0 && buffer_.size() == 0) return Close();
      phase_ = Phase::kLingering;
      buffer_.consume(buffer_.size());
      ArmTimer(kLingerTimeout);
      Watch();
      return;
    }
    if (!watching_) return DoRead();
    phase_ = Phase::kIdle;  // the pending watch read starts the next request
    if (buffer_.size() > 0) {
      beast::error_code ignored;
      socket_.cancel(ignored);  // the only read pending is the watch; it ends now, then DoRead
      return;
    }
    ArmTimer(absl::ToChronoNanoseconds(core_.options.request_timeout));
  }

  tcp::socket socket_;
  net::steady_timer timer_;
  ServerCore& core_;
  std::string peer_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Phase phase_ = Phase::kReading;
  uint64_t timer_generation_ = 0;
  uint64_t last_id_ = 0;
  uint64_t current_id_ = 0;
  std::weak_ptr<HttpExchange> exchange_;
  std::shared_ptr<Session> hold_;
  std::string method_, path_;  // of the current request, for logs
  bool keep_alive_ = true;
  bool http10_ = false;
  bool head_ = false;  // the current request is a HEAD
  bool watching_ = false;
  bool writing_ = false;
  std::deque<Piece> out_;
  std::deque<Piece> in_flight_;
};

}  // namespace internal_http

using internal_http::Session;

// ---- HttpExchange ----------------------------------------------------------------------------

HttpExchange::HttpExchange(uint64_t id, std::weak_ptr<internal_http::Session> session,
                           std::shared_ptr<internal_http::Lifeline> lifeline, size_t max_buffered)
    : id_(id),
      session_(std::move(session)),
      lifeline_(std::move(lifeline)),
      max_buffered_(max_buffered) {}

HttpExchange::~HttpExchange() {
  const int state = state_.load();
  if (state == kDone) return;
  const uint64_t id = id_;
  Post([id](Session& s) { s.Abandon(id); });
}

bool HttpExchange::Post(std::function<void(internal_http::Session&)> fn) {
  absl::ReaderMutexLock lock(&lifeline_->mu);
  if (!lifeline_->alive) return false;
  std::shared_ptr<Session> session = session_.lock();
  if (session == nullptr) return false;
  net::any_io_executor executor = session->executor();
  net::post(executor, [session = std::move(session), fn = std::move(fn)] { fn(*session); });
  return true;
}

void HttpExchange::Respond(HttpResponse response) {
  int expected = kNew;
  if (!state_.compare_exchange_strong(expected, kDone)) return;
  const uint64_t id = id_;
  Post([id, response = std::move(response)](Session& s) mutable {
    s.Respond(id, std::move(response));
  });
}

void HttpExchange::StartStream(int status, absl::string_view content_type, HttpHeaders headers) {
  int expected = kNew;
  if (!state_.compare_exchange_strong(expected, kStreaming)) return;
  const uint64_t id = id_;
  Post([id, status, content_type = std::string(content_type), headers = std::move(headers)](
           Session& s) { s.StartStream(id, status, content_type, headers); });
}

bool HttpExchange::Write(std::string data) {
  if (gone_.load(std::memory_order_acquire) || state_.load() != kStreaming) return false;
  const size_t size = data.size();
  const uint64_t id = id_;
  if (buffered_.fetch_add(size, std::memory_order_relaxed) + size > max_buffered_) {
    buffered_.fetch_sub(size, std::memory_order_relaxed);
    gone_.store(true, std::memory_order_release);
    Post([id](Session& s) { s.Cut(id); });
    return false;
  }
  if (!Post([id, data = std::move(data)](Session& s) mutable {
        s.WriteChunk(id, std::move(data));
      })) {
    gone_.store(true, std::memory_order_release);
    return false;
  }
  return true;
}

void HttpExchange::Finish() {
  int expected = kStreaming;
  if (!state_.compare_exchange_strong(expected, kDone)) return;
  const uint64_t id = id_;
  Post([id](Session& s) { s.Finish(id); });
}

void HttpExchange::OnDisconnect(std::function<void()> callback) {
  {
    absl::MutexLock lock(&mu_);
    if (!disconnect_fired_) {
      on_disconnect_ = std::move(callback);
      return;
    }
  }
  callback();
}

void HttpExchange::NotifyDisconnected() {
  gone_.store(true, std::memory_order_release);
  std::function<void()> callback;
  {
    absl::MutexLock lock(&mu_);
    if (disconnect_fired_) return;
    disconnect_fired_ = true;
    callback.swap(on_disconnect_);
  }
  if (callback) callback();
}

// ---- HttpServer ------------------------------------------------------------------------------

struct HttpServer::Impl {
  Impl(const HttpServerOptions& options, const Handler& handler) : core(options, handler) {}

  void Accept() {
    acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      if (ec) {
        // Out of descriptors and the like: retry shortly rather than spin.
        spdlog::warn("http: accept failed: {}", ec.message());
        accept_retry.expires_after(std::chrono::milliseconds(100));
        accept_retry.async_wait([this](beast::error_code ec) {
          if (!ec) Accept();
        });
        return;
      }
      auto session = std::make_shared<Session>(std::move(socket), core);
      if (core.Register(session)) {
        net::post(session->executor(), [session] { session->Start(); });
      }
      Accept();
    });
  }

  // Posts fn onto every open session's strand.
  void ForEachSession(const std::function<void(Session&)>& fn) {
    std::vector<std::shared_ptr<Session>> sessions;
    {
      absl::MutexLock lock(&core.mu);
      for (auto& [ptr, weak] : core.sessions) {
        if (auto s = weak.lock()) sessions.push_back(std::move(s));
      }
    }
    for (auto& s : sessions) {
      net::post(s->executor(), [s, fn] { fn(*s); });
    }
  }

  bool WaitForNoSessions(absl::Duration timeout) {
    absl::MutexLock lock(&core.mu);
    auto empty = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(core.mu) { return core.sessions.empty(); };
    return core.mu.AwaitWithTimeout(absl::Condition(&empty), timeout);
  }

  // Declared first: destroyed last, after everything that uses it.
  net::io_context ioc;
  internal_http::ServerCore core;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  net::strand<net::io_context::executor_type> accept_strand{ioc.get_executor()};
  tcp::acceptor acceptor{accept_strand};
  net::steady_timer accept_retry{accept_strand};
  std::vector<std::thread> threads;
  bool started = false;
  bool stopped = false;
};

HttpServer::HttpServer(HttpServerOptions options, Handler handler)
    : options_(std::move(options)),
      handler_(std::move(handler)),
      impl_(std::make_unique<Impl>(options_, handler_)) {}

HttpServer::~HttpServer() { Stop(absl::ZeroDuration()); }

absl::Status HttpServer::Start() {
  if (impl_->started) return absl::FailedPreconditionError("the HTTP server was already started");
  beast::error_code ec;
  const net::ip::address address = net::ip::make_address(options_.address, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP listen address '", options_.address, "': ", ec.message()));
  }
  const tcp::endpoint endpoint(address, options_.port);
  const std::string where = absl::StrCat(options_.address, ":", options_.port);
  tcp::acceptor& acceptor = impl_->acceptor;
  if (acceptor.open(endpoint.protocol(), ec); ec) {
    return absl::InternalError(absl::StrCat("HTTP listen on ", where, ": ", ec.message()));
  }
  acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (acceptor.bind(endpoint, ec); ec) {
    return absl::UnavailableError(absl::StrCat("HTTP listen on ", where, ": ", ec.message()));
  }
  if (acceptor.listen(net::socket_base::max_listen_connections, ec); ec) {
    return absl::UnavailableError(absl::StrCat("HTTP listen on ", where, ": ", ec.message()));
  }
  port_ = acceptor.local_endpoint(ec).port();
  impl_->started = true;
  impl_->work.emplace(impl_->ioc.get_executor());
  net::post(impl_->accept_strand, [impl = impl_.get()] { impl->Accept(); });
  const int threads = std::max(1, options_.io_threads);
  for (int i = 0; i < threads; ++i) {
    impl_->threads.emplace_back([impl = impl_.get()] { impl->ioc.run(); });
  }
  return absl::OkStatus();
}

void HttpServer::Stop(absl::Duration grace) {
  if (!impl_->started || impl_->stopped) return;
  impl_->stopped = true;
  {
    absl::MutexLock lock(&impl_->core.mu);
    impl_->core.stopping = true;
  }
  absl::Notification closed;
  net::post(impl_->accept_strand, [impl = impl_.get(), &closed] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
    impl->accept_retry.cancel();
    closed.Notify();
  });
  closed.WaitForNotification();  // io threads are running: this is quick
  impl_->ForEachSession([](Session& s) { s.StopGracefully(); });
  if (!impl_->WaitForNoSessions(grace)) {
    impl_->ForEachSession([](Session& s) { s.Close(); });
    // Close() runs at once on each strand unless a handler is stuck on an io thread.
    if (!impl_->WaitForNoSessions(absl::Seconds(5))) {
      spdlog::error("http: connections still open after stop; a handler may be blocking");
    }
  }
  {
    absl::WriterMutexLock lock(&impl_->core.lifeline->mu);
    impl_->core.lifeline->alive = false;
  }
  impl_->work.reset();
  impl_->ioc.stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
}

size_t HttpServer::connections() const {
  absl::MutexLock lock(&impl_->core.mu);
  return impl_->core.sessions.size();
}

}  // namespace strata
