// Service discovery (DESIGN.md §4, §6): every service registers a record under a lease it renews
// with a heartbeat, carrying its load; a service whose lease lapses is out of rotation. Readers
// (the router, prefill looking up decode workers) list the live records of a role.
//
// Implementations: RedisRegistry (hiredis; records are keys `strata:<cluster>:svc:<role>:<id>`
// with a PX expiry, so Redis itself drops lapsed leases) and InMemoryRegistry (unit tests, with
// an injected Clock).
//
// Threading: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace strata::registry {

struct Load {
  int64_t queued_tokens = 0;  // prompt tokens waiting for prefill / requests waiting for admission
  int64_t running_requests = 0;
  int64_t free_kv_blocks = 0;
  int64_t total_kv_blocks = 0;
};

struct ServiceRecord {
  std::string id;                 // unique per process, e.g. "decode-0-<pid>"
  std::string role;               // "router", "prefill", "decode", "experts", "kvstore"
  std::string grpc_address;       // host:port
  std::string http_address;       // host:port of /metrics and /healthz
  std::string transport_address;  // Transport::address(), opaque bytes
  std::string model;              // model id served
  // The scope of its prefix-cache block keys (engine::KeyScope::Hex(): weights + KV layout), so
  // the router computes the keys it holds blocks under; empty for services without a KV cache.
  std::string kv_scope;
  Load load;
};

// Serializes a record (JSON) for storage; Parse rejects malformed input with a clear error.
std::string Serialize(const ServiceRecord& record);
absl::StatusOr<ServiceRecord> ParseRecord(std::string_view bytes);

class Registry {
 public:
  virtual ~Registry() = default;
  // Creates or renews `record` for `lease`.
  virtual absl::Status Put(const ServiceRecord& record, absl::Duration lease) = 0;
  virtual absl::Status Remove(const std::string& role, const std::string& id) = 0;
  // Live records of `role`, sorted by id.
  virtual absl::StatusOr<std::vector<ServiceRecord>> List(const std::string& role) = 0;
};

std::unique_ptr<Registry> MakeInMemoryRegistry(Clock& clock);

struct RedisOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string cluster = "default";  // key namespace
  absl::Duration timeout = absl::Seconds(2);
};
// Connects lazily and reconnects after errors; calls fail with Unavailable while Redis is down.
absl::StatusOr<std::unique_ptr<Registry>> MakeRedisRegistry(const RedisOptions& options);
// "host:port" → options (port defaults to 6379).
absl::StatusOr<RedisOptions> ParseRedisAddress(std::string_view address);

// Keeps one record registered: Put() every lease/3 with the load from `load` (may be null: the
// record's own load is kept), until destroyed, then Remove(). Failures are logged and retried; they
// never stop the service. `load` runs on the heartbeat's thread. Destruction returns promptly (it
// does not wait out the period); a heartbeat that never started successfully removes nothing.
class Heartbeat {
 public:
  Heartbeat(Registry& registry, ServiceRecord record, absl::Duration lease,
            std::function<Load()> load, Clock& clock = Clock::Real());
  ~Heartbeat();
  // Registers once synchronously: a service reports ready only after this succeeded.
  absl::Status Start();

 private:
  void Loop(absl::Time first_renewal);
  Registry& registry_;
  ServiceRecord record_;
  const absl::Duration lease_;
  std::function<Load()> load_;
  Clock& clock_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace strata::registry
