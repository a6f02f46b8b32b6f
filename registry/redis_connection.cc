#include "registry/redis_connection.h"

#include <signal.h>
#include <sys/time.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace strata::registry::internal {
namespace {

// hiredis writes with write(2): on a socket Redis has closed that raises SIGPIPE, whose default
// action kills the process. Block it on this thread for the duration of a command and discard one
// raised meanwhile, leaving the process's signal disposition alone.
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~ScopedSigpipeBlock() {
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero = {0, 0};
        sigtimedwait(&pipe_, nullptr, &zero);
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
};

bool Transient(const std::string& error) {
  return absl::StartsWith(error, "LOADING") || absl::StartsWith(error, "BUSY") ||
         absl::StartsWith(error, "MASTERDOWN") || absl::StartsWith(error, "TRYAGAIN") ||
         absl::StartsWith(error, "READONLY");
}

}  // namespace

std::string ReplyText(const redisReply& reply) { return std::string(reply.str, reply.len); }

RedisConnection::RedisConnection(RedisOptions options)
    : options_(std::move(options)), where_(absl::StrCat("redis ", options_.host, ":", options_.port)) {}

RedisConnection::~RedisConnection() = default;

absl::Status RedisConnection::Unexpected(absl::string_view command, const redisReply& reply) const {
  return absl::InternalError(
      absl::StrCat(where_, ": ", command, ": unexpected reply of type ", reply.type));
}

absl::Status RedisConnection::ErrorReply(const std::string& command, const redisReply& reply) const {
  const std::string error = ReplyText(reply);
  const std::string message = absl::StrCat(where_, ": ", command, ": ", error);
  return Transient(error) ? absl::UnavailableError(message) : absl::InternalError(message);
}

absl::Status RedisConnection::Connect() {
  const timeval tv = absl::ToTimeval(options_.timeout);
  std::unique_ptr<redisContext, ContextDeleter> context(
      redisConnectWithTimeout(options_.host.c_str(), options_.port, tv));
  if (context == nullptr)
    return absl::UnavailableError(absl::StrCat(where_, ": cannot allocate a connection"));
  if (context->err != 0) {
    return absl::UnavailableError(absl::StrCat(where_, ": connect: ", context->errstr));
  }
  // The connect timeout bounds connecting only; this one bounds every later read and write.
  if (redisSetTimeout(context.get(), tv) != REDIS_OK) {
    return absl::UnavailableError(
        absl::StrCat(where_, ": setting the command timeout: ", context->errstr));
  }
  context_ = std::move(context);
  return absl::OkStatus();
}

absl::StatusOr<ReplyPtr> RedisConnection::Run(const std::vector<std::string>& args) {
  absl::StatusOr<std::vector<ReplyPtr>> replies = Pipeline({args});
  if (!replies.ok()) return replies.status();
  ReplyPtr reply = std::move(replies->front());
  if (reply->type == REDIS_REPLY_ERROR) return ErrorReply(args[0], *reply);
  return reply;
}

absl::StatusOr<std::vector<ReplyPtr>> RedisConnection::Pipeline(
    const std::vector<std::vector<std::string>>& commands) {
  absl::MutexLock lock(&mu_);
  for (int attempt = 0;; ++attempt) {
    bool fresh = false;
    if (context_ == nullptr) {
      if (absl::Status status = Connect(); !status.ok()) return status;
      fresh = true;
    }
    std::vector<ReplyPtr> replies;
    bool broken = false;
    {
      ScopedSigpipeBlock no_sigpipe;
      for (const std::vector<std::string>& args : commands) {
        std::vector<const char*> argv;
        std::vector<size_t> argvlen;
        for (const std::string& arg : args) {
          argv.push_back(arg.data());
          argvlen.push_back(arg.size());
        }
        if (redisAppendCommandArgv(context_.get(), static_cast<int>(argv.size()), argv.data(),
                                   argvlen.data()) != REDIS_OK) {
          broken = true;
          break;
        }
      }
      for (size_t i = 0; !broken && i < commands.size(); ++i) {
        void* reply = nullptr;
        if (redisGetReply(context_.get(), &reply) != REDIS_OK || reply == nullptr) {
          broken = true;
          break;
        }
        replies.emplace_back(static_cast<redisReply*>(reply));
      }
    }
    if (!broken) return replies;
    // The context is unusable after an I/O or protocol error.
    const std::string error = context_->errstr;
    context_.reset();
    if (fresh || attempt > 0) {
      return absl::UnavailableError(absl::StrCat(where_, ": ", commands.front().front(),
                                                 commands.size() > 1 ? " (pipelined)" : "", ": ", error));
    }
  }
}

}  // namespace strata::registry::internal
