// A connection to Redis shared by the registry's Redis-backed classes (RedisRegistry,
// RedisPrefixIndex): opened on first use, dropped after any I/O error, and a command (or a
// pipeline) that fails on a connection that had worked is retried once on a fresh one — every
// command sent through it must be idempotent — so a Redis restart costs callers nothing once it
// is back. Error replies become Unavailable when they mean "not now" (loading, busy, failover),
// Internal otherwise.
//
// Threading: thread-safe (one mutex; calls are serialized).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hiredis/hiredis.h"
#include "registry/registry.h"

namespace strata::registry::internal {

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

std::string ReplyText(const redisReply& reply);

class RedisConnection {
 public:
  explicit RedisConnection(RedisOptions options);
  ~RedisConnection();

  // One command.
  absl::StatusOr<ReplyPtr> Run(const std::vector<std::string>& args);
  // Several commands in one round trip; their replies in order. An error reply to one of them is
  // returned as that reply (the caller looks), a broken connection fails the whole call.
  absl::StatusOr<std::vector<ReplyPtr>> Pipeline(const std::vector<std::vector<std::string>>& commands);

  absl::Status Unexpected(absl::string_view command, const redisReply& reply) const;
  const RedisOptions& options() const { return options_; }
  const std::string& where() const { return where_; }

 private:
  struct ContextDeleter {
    void operator()(redisContext* c) const { redisFree(c); }
  };
  absl::Status Connect() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ErrorReply(const std::string& command, const redisReply& reply) const;

  const RedisOptions options_;
  const std::string where_;  // "redis host:port", for messages
  absl::Mutex mu_;
  std::unique_ptr<redisContext, ContextDeleter> context_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::registry::internal
