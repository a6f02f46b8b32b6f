// The prefix index (registry/prefix_index.h), in memory and against a real redis-server: a
// location's run is the keys it holds consecutively from the first; removes and TTLs take
// entries away; a Redis restart empties the index without failing later calls; the publisher
// delivers a worker's updates in order and bounds what waits.
#include "registry/prefix_index.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/unit/registry/redis_server.h"

namespace strata::registry {
namespace {

std::vector<std::string> Keys(const std::string& doc, int n) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back(absl::StrCat(doc, "-", i));
  return keys;
}

template <typename F>
bool WaitFor(F done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

TEST(PrefixRunsTest, ARunEndsAtTheFirstKeyALocationLacks) {
  const std::vector<std::vector<std::string>> holders = {{"a", "b", "c"}, {"a", "b"}, {"a", "c"}, {"a"}};
  const std::vector<PrefixRun> runs = RunsFromHolders(holders);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].location, "a");
  EXPECT_EQ(runs[0].blocks, 4);
  EXPECT_EQ(runs[1].location, "b");
  EXPECT_EQ(runs[1].blocks, 2);
  EXPECT_EQ(runs[2].location, "c");  // holds key 2 too, but not key 1
  EXPECT_EQ(runs[2].blocks, 1);
  EXPECT_TRUE(RunsFromHolders({}).empty());
}

// Both implementations behave the same.
void Exercise(PrefixIndex& index) {
  ASSERT_TRUE(index.Add("decode-0", Keys("doc", 10)).ok());
  ASSERT_TRUE(index.Add("prefill-0", Keys("doc", 4)).ok());
  ASSERT_TRUE(index.Add("decode-1", Keys("other", 3)).ok());
  absl::StatusOr<std::vector<PrefixRun>> runs = index.Longest(Keys("doc", 12));
  ASSERT_TRUE(runs.ok()) << runs.status();
  ASSERT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[0].location, "decode-0");
  EXPECT_EQ((*runs)[0].blocks, 10);
  EXPECT_EQ((*runs)[1].location, "prefill-0");
  EXPECT_EQ((*runs)[1].blocks, 4);
  // Evicted from the middle: the run stops there.
  ASSERT_TRUE(index.Remove("decode-0", {Keys("doc", 10)[6]}).ok());
  runs = index.Longest(Keys("doc", 12));
  ASSERT_TRUE(runs.ok());
  EXPECT_EQ((*runs)[0].blocks, 6);
  // Nobody holds the first key: no runs.
  runs = index.Longest(Keys("nothing", 5));
  ASSERT_TRUE(runs.ok());
  EXPECT_TRUE(runs->empty());
  // A chain longer than one pipeline.
  ASSERT_TRUE(index.Add("decode-1", Keys("long", 3000)).ok());
  runs = index.Longest(Keys("long", 3001));
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  EXPECT_EQ((*runs)[0].blocks, 3000);
}

TEST(PrefixIndexTest, InMemory) {
  auto index = MakeInMemoryPrefixIndex();
  Exercise(*index);
}

class RedisPrefixIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  std::unique_ptr<PrefixIndex> Make(absl::Duration ttl = absl::Minutes(1), std::string cluster = "test") {
    RedisPrefixIndexOptions o;
    o.redis.port = server_->port();
    o.redis.cluster = std::move(cluster);
    o.ttl = ttl;
    auto index = MakeRedisPrefixIndex(o);
    EXPECT_TRUE(index.ok()) << index.status();
    return index.ok() ? *std::move(index) : nullptr;
  }
  std::unique_ptr<RedisServer> server_;
};

TEST_F(RedisPrefixIndexTest, SameAsInMemory) {
  auto index = Make();
  Exercise(*index);
  // Another cluster's index in the same Redis sees none of it.
  auto other = Make(absl::Minutes(1), "elsewhere");
  absl::StatusOr<std::vector<PrefixRun>> runs = other->Longest(Keys("doc", 4));
  ASSERT_TRUE(runs.ok());
  EXPECT_TRUE(runs->empty());
}

TEST_F(RedisPrefixIndexTest, EntriesExpireAndARestartedRedisIsEmptyNotBroken) {
  auto index = Make(absl::Seconds(1));
  ASSERT_TRUE(index->Add("decode-0", Keys("doc", 3)).ok());
  EXPECT_EQ(index->Longest(Keys("doc", 3))->size(), 1u);
  EXPECT_TRUE(WaitFor([&] { return index->Longest(Keys("doc", 3))->empty(); }, absl::Seconds(5)))
      << "a dead worker's entries must lapse";
  ASSERT_TRUE(index->Add("decode-0", Keys("doc", 3)).ok());
  ASSERT_TRUE(server_->Restart().ok());
  absl::StatusOr<std::vector<PrefixRun>> runs = index->Longest(Keys("doc", 3));
  ASSERT_TRUE(runs.ok()) << runs.status();
  EXPECT_TRUE(runs->empty());
  ASSERT_TRUE(server_->Stop().ok());
  EXPECT_EQ(index->Longest(Keys("doc", 3)).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(RedisPrefixIndexTest, ThePublisherDeliversUpdatesInOrder) {
  auto index = Make();
  {
    PrefixPublisher publisher(*index, "prefill-0");
    publisher.Added(Keys("doc", 8));
    publisher.Removed({Keys("doc", 8)[5]});
    publisher.Added(Keys("b", 2));
  }  // the destructor sends what is queued
  absl::StatusOr<std::vector<PrefixRun>> runs = index->Longest(Keys("doc", 8));
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  EXPECT_EQ((*runs)[0].blocks, 5);
  EXPECT_EQ(index->Longest(Keys("b", 2))->front().blocks, 2);
  // With Redis gone, updates fail (counted) and the publisher still shuts down promptly.
  ASSERT_TRUE(server_->Stop().ok());
  const absl::Time begin = absl::Now();
  {
    PrefixPublisher publisher(*index, "prefill-0", /*max_pending=*/16);
    for (int i = 0; i < 20; ++i) publisher.Added(Keys(absl::StrCat("x", i), 4));
    EXPECT_TRUE(WaitFor([&] { return publisher.failures() > 0; }));
    EXPECT_GT(publisher.dropped(), 0);
  }
  EXPECT_LT(absl::Now() - begin, absl::Seconds(15));
}

}  // namespace
}  // namespace strata::registry
