// RedisRegistry: records are keys `strata:<cluster>:svc:<role>:<id>` holding the JSON record, set
// with a PX expiry equal to the lease, so Redis itself drops services whose heartbeat stopped.
//
// One connection, guarded by a mutex (registry calls are a few per second per service). The
// connection is opened on first use and dropped after any I/O error; the next call reconnects. A
// command that fails on a connection that had worked is retried once on a fresh one (every
// command here is idempotent), so a Redis restart costs callers nothing once it is back.
#include <signal.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/strings.h"
#include "hiredis/hiredis.h"
#include "registry/internal.h"
#include "registry/registry.h"
#include "spdlog/spdlog.h"

namespace strata::registry {
namespace {

constexpr int kScanCount = 256;  // keys per SCAN step and per MGET

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

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

// SCAN MATCH treats * ? [ ] \ specially; the cluster and role are literal text.
std::string EscapeGlob(absl::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

std::string ReplyText(const redisReply& reply) { return std::string(reply.str, reply.len); }

class RedisRegistry final : public Registry {
 public:
  explicit RedisRegistry(RedisOptions options)
      : options_(std::move(options)),
        where_(absl::StrCat("redis ", options_.host, ":", options_.port)) {}

  absl::Status Put(const ServiceRecord& record, absl::Duration lease) override {
    if (absl::Status status = ValidatePut(record, lease); !status.ok()) return status;
    absl::StatusOr<ReplyPtr> reply = Run({"SET", Key(record.role, record.id), Serialize(record),
                                          "PX", absl::StrCat(absl::ToInt64Milliseconds(lease))});
    if (!reply.ok()) return reply.status();
    if ((*reply)->type != REDIS_REPLY_STATUS) return Unexpected("SET", **reply);
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& role, const std::string& id) override {
    if (absl::Status status = ValidateRole(role); !status.ok()) return status;
    absl::StatusOr<ReplyPtr> reply = Run({"DEL", Key(role, id)});
    if (!reply.ok()) return reply.status();
    if ((*reply)->type != REDIS_REPLY_INTEGER) return Unexpected("DEL", **reply);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<ServiceRecord>> List(const std::string& role) override {
    if (absl::Status status = ValidateRole(role); !status.ok()) return status;
    const std::string pattern = absl::StrCat(EscapeGlob(Prefix(role)), "*");
    std::vector<std::string> keys;
    std::string cursor = "0";
    do {
      absl::StatusOr<ReplyPtr> reply =
          Run({"SCAN", cursor, "MATCH", pattern, "COUNT", absl::StrCat(kScanCount)});
      if (!reply.ok()) return reply.status();
      const redisReply& r = **reply;
      if (r.type != REDIS_REPLY_ARRAY || r.elements != 2 ||
          r.element[0]->type != REDIS_REPLY_STRING || r.element[1]->type != REDIS_REPLY_ARRAY) {
        return Unexpected("SCAN", r);
      }
      cursor = ReplyText(*r.element[0]);
      const redisReply& batch = *r.element[1];
      for (size_t i = 0; i < batch.elements; ++i) {
        if (batch.element[i]->type == REDIS_REPLY_STRING)
          keys.push_back(ReplyText(*batch.element[i]));
      }
    } while (cursor != "0");
    // SCAN may return a key more than once.
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());

    std::vector<ServiceRecord> records;
    for (size_t start = 0; start < keys.size(); start += kScanCount) {
      const size_t end = std::min(keys.size(), start + kScanCount);
      std::vector<std::string> args = {"MGET"};
      args.insert(args.end(), keys.begin() + start, keys.begin() + end);
      absl::StatusOr<ReplyPtr> reply = Run(args);
      if (!reply.ok()) return reply.status();
      const redisReply& r = **reply;
      if (r.type != REDIS_REPLY_ARRAY || r.elements != end - start) return Unexpected("MGET", r);
      for (size_t i = 0; i < r.elements; ++i) {
        const redisReply& value = *r.element[i];
        if (value.type == REDIS_REPLY_NIL) continue;  // lease lapsed or removed since the SCAN
        if (value.type != REDIS_REPLY_STRING) {
          spdlog::warn("{}: key {} does not hold a string; skipped", where_, keys[start + i]);
          continue;
        }
        absl::StatusOr<ServiceRecord> record = ParseRecord(std::string_view(value.str, value.len));
        if (!record.ok()) {
          // One bad writer must not take the whole role out of rotation.
          spdlog::warn("{}: key {}: {}; skipped", where_, keys[start + i],
                       ToStd(record.status().message()));
          continue;
        }
        if (record->role != role) continue;
        records.push_back(*std::move(record));
      }
    }
    std::sort(records.begin(), records.end(),
              [](const ServiceRecord& a, const ServiceRecord& b) { return a.id < b.id; });
    return records;
  }

 private:
  std::string Prefix(const std::string& role) const {
    return absl::StrCat("strata:", options_.cluster, ":svc:", role, ":");
  }
  std::string Key(const std::string& role, const std::string& id) const {
    return absl::StrCat(Prefix(role), id);
  }

  absl::Status Unexpected(absl::string_view command, const redisReply& reply) const {
    return absl::InternalError(
        absl::StrCat(where_, ": ", command, ": unexpected reply of type ", reply.type));
  }

  absl::Status Connect() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const timeval tv = absl::ToTimeval(options_.timeout);
    ContextPtr context(redisConnectWithTimeout(options_.host.c_str(), options_.port, tv));
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

  // Runs one command; reconnects as described at the top of the file. Redis error replies become
  // Unavailable when they mean "not now" (loading, busy, failover), Internal otherwise.
  absl::StatusOr<ReplyPtr> Run(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> argvlen;
    for (const std::string& arg : args) {
      argv.push_back(arg.data());
      argvlen.push_back(arg.size());
    }
    absl::MutexLock lock(&mu_);
    for (int attempt = 0;; ++attempt) {
      bool fresh = false;
      if (context_ == nullptr) {
        if (absl::Status status = Connect(); !status.ok()) return status;
        fresh = true;
      }
      ReplyPtr reply;
      {
        ScopedSigpipeBlock no_sigpipe;
        reply.reset(static_cast<redisReply*>(redisCommandArgv(
            context_.get(), static_cast<int>(argv.size()), argv.data(), argvlen.data())));
      }
      if (reply != nullptr) {
        if (reply->type != REDIS_REPLY_ERROR) return reply;
        const std::string error = ReplyText(*reply);
        const bool transient =
            absl::StartsWith(error, "LOADING") || absl::StartsWith(error, "BUSY") ||
            absl::StartsWith(error, "MASTERDOWN") || absl::StartsWith(error, "TRYAGAIN") ||
            absl::StartsWith(error, "READONLY");
        const std::string message = absl::StrCat(where_, ": ", args[0], ": ", error);
        return transient ? absl::UnavailableError(message) : absl::InternalError(message);
      }
      // The context is unusable after an I/O or protocol error.
      const std::string error = context_->errstr;
      context_.reset();
      if (fresh || attempt > 0)
        return absl::UnavailableError(absl::StrCat(where_, ": ", args[0], ": ", error));
    }
  }

  const RedisOptions options_;
  const std::string where_;  // "redis host:port", for messages
  absl::Mutex mu_;
  ContextPtr context_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Registry>> MakeRedisRegistry(const RedisOptions& options) {
  if (options.host.empty()) return absl::InvalidArgumentError("redis registry: empty host");
  if (options.port < 1 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis registry: port ", options.port, " is not in 1..65535"));
  }
  if (options.cluster.empty())
    return absl::InvalidArgumentError("redis registry: empty cluster name");
  if (options.timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "redis registry: timeout ", absl::FormatDuration(options.timeout), " is shorter than 1ms"));
  }
  return std::unique_ptr<Registry>(new RedisRegistry(options));
}

}  // namespace strata::registry
