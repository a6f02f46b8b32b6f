#include <atomic>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "registry/registry.h"

namespace strata::registry {
namespace {

// Waits (real time) until `done()` holds or `timeout` passes; returns whether it held.
template <typename F>
bool WaitFor(F done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

ServiceRecord Record() {
  ServiceRecord r;
  r.role = "decode";
  r.id = "decode-0-42";
  return r;
}

// A registry that fails while `down` is set, counting calls.
class FlakyRegistry final : public Registry {
 public:
  explicit FlakyRegistry(Clock& clock) : inner_(MakeInMemoryRegistry(clock)) {}
  absl::Status Put(const ServiceRecord& record, absl::Duration lease) override {
    ++puts;
    if (down) return absl::UnavailableError("down");
    return inner_->Put(record, lease);
  }
  absl::Status Remove(const std::string& role, const std::string& id) override {
    if (down) return absl::UnavailableError("down");
    return inner_->Remove(role, id);
  }
  absl::StatusOr<std::vector<ServiceRecord>> List(const std::string& role) override {
    return inner_->List(role);
  }

  std::atomic<bool> down{false};
  std::atomic<int> puts{0};

 private:
  std::unique_ptr<Registry> inner_;
};

TEST(HeartbeatTest, RenewsWithFreshLoadEveryThirdOfTheLeaseAndRemovesOnStop) {
  SimulatedClock clock;
  auto registry = MakeInMemoryRegistry(clock);
  std::atomic<int> calls{0};
  {
    Heartbeat heartbeat(
        *registry, Record(), absl::Seconds(3),
        [&] {
          Load load;
          load.running_requests = ++calls;
          return load;
        },
        clock);
    ASSERT_TRUE(heartbeat.Start().ok());
    auto listed = registry->List("decode");
    ASSERT_TRUE(listed.ok());
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].load.running_requests, 1);

    // Ten leases' worth of time, a third of a lease at a time: each step triggers one renewal.
    for (int step = 1; step <= 30; ++step) {
      clock.Advance(absl::Seconds(1));
      ASSERT_TRUE(WaitFor([&] { return calls.load() == step + 1; })) << "step " << step;
      ASSERT_TRUE(WaitFor([&] {
        auto records = registry->List("decode");
        return records.ok() && records->size() == 1 &&
               (*records)[0].load.running_requests == step + 1;
      })) << "step "
          << step;
    }
  }
  // Destroyed without advancing the clock: stops at once and deregisters.
  auto listed = registry->List("decode");
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
}

TEST(HeartbeatTest, LeaseLapsesWithoutRenewal) {
  SimulatedClock clock;
  auto registry = MakeInMemoryRegistry(clock);
  ASSERT_TRUE(registry->Put(Record(), absl::Seconds(3)).ok());
  clock.Advance(absl::Seconds(3));
  EXPECT_TRUE(registry->List("decode")->empty());
}

TEST(HeartbeatTest, KeepsRetryingThroughRegistryFailures) {
  SimulatedClock clock;
  FlakyRegistry registry(clock);
  Heartbeat heartbeat(registry, Record(), absl::Seconds(3), nullptr, clock);
  ASSERT_TRUE(heartbeat.Start().ok());
  registry.down = true;
  // Past the lease: the record lapses while the registry is down...
  for (int i = 0; i < 4; ++i) {
    const int before = registry.puts;
    clock.Advance(absl::Seconds(1));
    ASSERT_TRUE(WaitFor([&] { return registry.puts > before; }));
  }
  EXPECT_TRUE(registry.List("decode")->empty());
  // ...and the next renewal after it is back re-registers the service.
  registry.down = false;
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(WaitFor([&] { return registry.List("decode")->size() == 1; }));
}

TEST(HeartbeatTest, StartFailsWhenFirstRegistrationFails) {
  SimulatedClock clock;
  FlakyRegistry registry(clock);
  registry.down = true;
  Heartbeat heartbeat(registry, Record(), absl::Seconds(3), nullptr, clock);
  EXPECT_EQ(heartbeat.Start().code(), absl::StatusCode::kUnavailable);
}

TEST(HeartbeatTest, RealClockStopsPromptlyOnDestruction) {
  auto registry = MakeInMemoryRegistry(Clock::Real());
  const absl::Time start = absl::Now();
  {
    Heartbeat heartbeat(*registry, Record(), absl::Hours(1), nullptr);
    ASSERT_TRUE(heartbeat.Start().ok());
    EXPECT_EQ(registry->List("decode")->size(), 1u);
  }
  // The loop waits 20 minutes for its next renewal; destruction must interrupt that wait.
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(registry->List("decode")->empty());
}

}  // namespace
}  // namespace strata::registry
