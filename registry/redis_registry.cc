// RedisRegistry: records are keys `strata:<cluster>:svc:<role>:<id>` holding the JSON record, set
// with a PX expiry equal to the lease, so Redis itself drops services whose heartbeat stopped.
//
// One connection (registry/redis_connection.h; registry calls are a few per second per service).
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
#include "registry/redis_connection.h"
#include "registry/registry.h"
#include "spdlog/spdlog.h"

namespace strata::registry {
namespace {

using internal::ReplyText;

constexpr int kScanCount = 256;  // keys per SCAN step and per MGET

// SCAN MATCH treats * ? [ ] \ specially; the cluster and role are literal text.
std::string EscapeGlob(absl::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

class RedisRegistry final : public Registry {
 public:
  explicit RedisRegistry(RedisOptions options)
      : options_(options), where_(absl::StrCat("redis ", options_.host, ":", options_.port)), redis_(options) {}

  absl::Status Put(const ServiceRecord& record, absl::Duration lease) override {
    if (absl::Status status = ValidatePut(record, lease); !status.ok()) return status;
    absl::StatusOr<internal::ReplyPtr> reply = Run({"SET", Key(record.role, record.id), Serialize(record),
                                          "PX", absl::StrCat(absl::ToInt64Milliseconds(lease))});
    if (!reply.ok()) return reply.status();
    if ((*reply)->type != REDIS_REPLY_STATUS) return Unexpected("SET", **reply);
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& role, const std::string& id) override {
    if (absl::Status status = ValidateRole(role); !status.ok()) return status;
    absl::StatusOr<internal::ReplyPtr> reply = Run({"DEL", Key(role, id)});
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
      absl::StatusOr<internal::ReplyPtr> reply =
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
      absl::StatusOr<internal::ReplyPtr> reply = Run(args);
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

  absl::StatusOr<internal::ReplyPtr> Run(const std::vector<std::string>& args) { return redis_.Run(args); }
  absl::Status Unexpected(absl::string_view command, const redisReply& reply) const {
    return redis_.Unexpected(command, reply);
  }

  const RedisOptions options_;
  const std::string where_;  // "redis host:port", for messages
  internal::RedisConnection redis_;
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
