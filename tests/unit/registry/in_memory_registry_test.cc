#include "gtest/gtest.h"
#include "registry/registry.h"

namespace strata::registry {
namespace {

ServiceRecord Record(std::string role, std::string id) {
  ServiceRecord r;
  r.role = std::move(role);
  r.id = std::move(id);
  r.grpc_address = "127.0.0.1:1";
  return r;
}

std::vector<std::string> Ids(Registry& registry, const std::string& role) {
  absl::StatusOr<std::vector<ServiceRecord>> records = registry.List(role);
  EXPECT_TRUE(records.ok()) << records.status();
  std::vector<std::string> ids;
  if (records.ok()) {
    for (const ServiceRecord& r : *records) ids.push_back(r.id);
  }
  return ids;
}

using Ids_ = std::vector<std::string>;

TEST(InMemoryRegistryTest, ListsLiveRecordsOfOneRoleSortedById) {
  SimulatedClock clock;
  auto registry = MakeInMemoryRegistry(clock);
  ASSERT_TRUE(registry->Put(Record("decode", "decode-1"), absl::Seconds(3)).ok());
  ASSERT_TRUE(registry->Put(Record("decode", "decode-0"), absl::Seconds(3)).ok());
  ASSERT_TRUE(registry->Put(Record("prefill", "prefill-0"), absl::Seconds(3)).ok());
  EXPECT_EQ(Ids(*registry, "decode"), (Ids_{"decode-0", "decode-1"}));
  EXPECT_EQ(Ids(*registry, "prefill"), (Ids_{"prefill-0"}));
  EXPECT_EQ(Ids(*registry, "router"), Ids_{});
}

TEST(InMemoryRegistryTest, LeaseExpiresByClockTime) {
  SimulatedClock clock;
  auto registry = MakeInMemoryRegistry(clock);
  ASSERT_TRUE(registry->Put(Record("decode", "d0"), absl::Seconds(3)).ok());
  ASSERT_TRUE(registry->Put(Record("decode", "d1"), absl::Seconds(10)).ok());
  clock.Advance(absl::Milliseconds(2999));
  EXPECT_EQ(Ids(*registry, "decode"), (Ids_{"d0", "d1"}));
  clock.Advance(absl::Milliseconds(1));
  EXPECT_EQ(Ids(*registry, "decode"), (Ids_{"d1"}));
}

TEST(InMemoryRegistryTest, PutRenewsLeaseAndReplacesLoad) {
  SimulatedClock clock;
  auto registry = MakeInMemoryRegistry(clock);
  ServiceRecord r = Record("decode", "d0");
  ASSERT_TRUE(registry->Put(r, absl::Seconds(3)).ok());
  clock.Advance(absl::Seconds(2));
  r.load.running_requests = 5;
  ASSERT_TRUE(registry->Put(r, absl::Seconds(3)).ok());
  clock.Advance(absl::Seconds(2));  // 4 s after the first Put, 2 s after the renewal
  absl::StatusOr<std::vector<ServiceRecord>> records = registry->List("decode");
  ASSERT_TRUE(records.ok());
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].load.running_requests, 5);
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(Ids(*registry, "decode"), Ids_{});
}

TEST(InMemoryRegistryTest, RemoveTakesRecordOutAndIsIdempotent) {
  SimulatedClock clock;
  auto registry = MakeInMemoryRegistry(clock);
  ASSERT_TRUE(registry->Put(Record("decode", "d0"), absl::Seconds(3)).ok());
  ASSERT_TRUE(registry->Put(Record("decode", "d1"), absl::Seconds(3)).ok());
  ASSERT_TRUE(registry->Remove("decode", "d0").ok());
  EXPECT_EQ(Ids(*registry, "decode"), (Ids_{"d1"}));
  EXPECT_TRUE(registry->Remove("decode", "d0").ok());
  EXPECT_TRUE(registry->Remove("prefill", "never-there").ok());
}

TEST(InMemoryRegistryTest, RejectsInvalidRecords) {
  SimulatedClock clock;
  auto registry = MakeInMemoryRegistry(clock);
  EXPECT_EQ(registry->Put(Record("decode", ""), absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry->Put(Record("", "x"), absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry->Put(Record("a:b", "x"), absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry->Put(Record("decode", "x"), absl::ZeroDuration()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::registry
