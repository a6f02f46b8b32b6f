// RedisRegistry against a real redis-server (started per test on a free port).
#include <atomic>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "hiredis/hiredis.h"
#include "registry/registry.h"
#include "tests/unit/registry/redis_server.h"

namespace strata::registry {
namespace {

template <typename F>
bool WaitFor(F done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

ServiceRecord Record(std::string role, std::string id) {
  ServiceRecord r;
  r.role = std::move(role);
  r.id = std::move(id);
  r.grpc_address = "127.0.0.1:8200";
  r.http_address = "127.0.0.1:8201";
  r.transport_address = std::string("\x00\x01\xfe", 3);
  r.model = "strata-tiny";
  r.load.free_kv_blocks = 17;
  return r;
}

// Runs one raw command on the server, for checks the Registry interface does not expose.
class RawRedis {
 public:
  explicit RawRedis(int port) : c_(redisConnect("127.0.0.1", port)) {}
  ~RawRedis() { redisFree(c_); }
  std::unique_ptr<redisReply, void (*)(void*)> Command(const char* format, const char* a,
                                                       const char* b = "") {
    return {static_cast<redisReply*>(redisCommand(c_, format, a, b)), freeReplyObject};
  }

 private:
  redisContext* c_;
};

class RedisRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    registry_ = Make("test");
  }

  std::unique_ptr<Registry> Make(std::string cluster) {
    RedisOptions options;
    options.port = server_->port();
    options.cluster = std::move(cluster);
    options.timeout = absl::Seconds(1);
    absl::StatusOr<std::unique_ptr<Registry>> registry = MakeRedisRegistry(options);
    EXPECT_TRUE(registry.ok()) << registry.status();
    return registry.ok() ? *std::move(registry) : nullptr;
  }

  std::vector<std::string> Ids(const std::string& role) {
    absl::StatusOr<std::vector<ServiceRecord>> records = registry_->List(role);
    EXPECT_TRUE(records.ok()) << records.status();
    std::vector<std::string> ids;
    if (records.ok()) {
      for (const ServiceRecord& r : *records) ids.push_back(r.id);
    }
    return ids;
  }

  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<Registry> registry_;
};

using Ids_ = std::vector<std::string>;

TEST_F(RedisRegistryTest, PutAndListRoundTripsRecordsSortedById) {
  for (const char* id : {"decode-2", "decode-0", "decode-1"}) {
    ASSERT_TRUE(registry_->Put(Record("decode", id), absl::Seconds(30)).ok());
  }
  ASSERT_TRUE(registry_->Put(Record("prefill", "prefill-0"), absl::Seconds(30)).ok());
  EXPECT_EQ(Ids("decode"), (Ids_{"decode-0", "decode-1", "decode-2"}));
  EXPECT_EQ(Ids("prefill"), (Ids_{"prefill-0"}));
  EXPECT_EQ(Ids("router"), Ids_{});

  absl::StatusOr<std::vector<ServiceRecord>> records = registry_->List("prefill");
  ASSERT_TRUE(records.ok());
  const ServiceRecord& r = (*records)[0];
  EXPECT_EQ(r.transport_address, std::string("\x00\x01\xfe", 3));
  EXPECT_EQ(r.http_address, "127.0.0.1:8201");
  EXPECT_EQ(r.load.free_kv_blocks, 17);
}

TEST_F(RedisRegistryTest, StoresUnderNamespacedKeyWithLeaseAsExpiry) {
  ASSERT_TRUE(registry_->Put(Record("decode", "decode-0"), absl::Seconds(30)).ok());
  RawRedis raw(server_->port());
  auto ttl = raw.Command("PTTL %s", "strata:test:svc:decode:decode-0");
  ASSERT_NE(ttl, nullptr);
  ASSERT_EQ(ttl->type, REDIS_REPLY_INTEGER);
  EXPECT_GT(ttl->integer, 0);
  EXPECT_LE(ttl->integer, 30000);
}

TEST_F(RedisRegistryTest, ClustersDoNotSeeEachOther) {
  std::unique_ptr<Registry> other = Make("other");
  ASSERT_TRUE(registry_->Put(Record("decode", "mine"), absl::Seconds(30)).ok());
  ASSERT_TRUE(other->Put(Record("decode", "theirs"), absl::Seconds(30)).ok());
  EXPECT_EQ(Ids("decode"), (Ids_{"mine"}));
}

TEST_F(RedisRegistryTest, LeaseExpires) {
  ASSERT_TRUE(registry_->Put(Record("decode", "short"), absl::Milliseconds(300)).ok());
  ASSERT_TRUE(registry_->Put(Record("decode", "long"), absl::Seconds(60)).ok());
  EXPECT_EQ(Ids("decode"), (Ids_{"long", "short"}));
  EXPECT_TRUE(WaitFor([&] { return Ids("decode") == Ids_{"long"}; }));
}

TEST_F(RedisRegistryTest, RemoveDeletesAndIsIdempotent) {
  ASSERT_TRUE(registry_->Put(Record("decode", "d0"), absl::Seconds(30)).ok());
  ASSERT_TRUE(registry_->Remove("decode", "d0").ok());
  EXPECT_EQ(Ids("decode"), Ids_{});
  EXPECT_TRUE(registry_->Remove("decode", "d0").ok());
}

TEST_F(RedisRegistryTest, SkipsMalformedRecords) {
  ASSERT_TRUE(registry_->Put(Record("decode", "good"), absl::Seconds(30)).ok());
  RawRedis raw(server_->port());
  ASSERT_NE(raw.Command("SET %s %s", "strata:test:svc:decode:bad", "{garbage"), nullptr);
  EXPECT_EQ(Ids("decode"), (Ids_{"good"}));
}

TEST_F(RedisRegistryTest, HeartbeatKeepsShortLeaseAliveAndRemovesOnStop) {
  std::atomic<int> renewals{0};
  {
    Heartbeat heartbeat(*registry_, Record("decode", "hb"), absl::Milliseconds(300), [&] {
      Load load;
      load.running_requests = ++renewals;
      return load;
    });
    ASSERT_TRUE(heartbeat.Start().ok());
    // Renewals for well past two leases (each lasts 300 ms, renewed every 100 ms): still listed.
    ASSERT_TRUE(WaitFor([&] { return renewals.load() >= 8; }));
    EXPECT_EQ(Ids("decode"), (Ids_{"hb"}));
  }
  EXPECT_EQ(Ids("decode"), Ids_{});
}

TEST_F(RedisRegistryTest, UnavailableWhileRedisIsDownThenReconnects) {
  ASSERT_TRUE(registry_->Put(Record("decode", "d0"), absl::Seconds(30)).ok());
  ASSERT_TRUE(server_->Stop().ok());
  EXPECT_EQ(registry_->Put(Record("decode", "d0"), absl::Seconds(30)).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry_->List("decode").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry_->Remove("decode", "d0").code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(server_->Restart().ok());
  // The restarted server kept nothing (no persistence); the next calls work without help.
  ASSERT_TRUE(registry_->Put(Record("decode", "d1"), absl::Seconds(30)).ok());
  EXPECT_EQ(Ids("decode"), (Ids_{"d1"}));
}

TEST_F(RedisRegistryTest, ReconnectsTransparentlyAfterRestart) {
  ASSERT_TRUE(registry_->Put(Record("decode", "d0"), absl::Seconds(30)).ok());
  ASSERT_TRUE(server_->Restart().ok());
  // The old connection is dead; the first call after the restart still succeeds.
  ASSERT_TRUE(registry_->Put(Record("decode", "d1"), absl::Seconds(30)).ok());
  EXPECT_EQ(Ids("decode"), (Ids_{"d1"}));
}

TEST_F(RedisRegistryTest, ConnectsLazilyToAServerThatStartsLater) {
  ASSERT_TRUE(server_->Stop().ok());
  std::unique_ptr<Registry> registry = Make("late");
  ASSERT_NE(registry, nullptr);
  EXPECT_EQ(registry->List("decode").status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(server_->Restart().ok());
  EXPECT_TRUE(registry->Put(Record("decode", "d0"), absl::Seconds(30)).ok());
}

}  // namespace
}  // namespace strata::registry
