// FaultyTransport over the in-process transport: drops, failures after N operations and delays,
// deterministic for a seed.
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/test_util.h"
#include "transport/transport.h"

namespace strata::transport {
namespace {

using ::strata::transport::testing::Completions;
using ::strata::transport::testing::kDeadline;
using ::testing::HasSubstr;

class FaultyTransportTest : public ::testing::Test {
 protected:
  void Start(const FaultOptions& options) {
    faulty_ = MakeFaultyTransport(MakeInProcTransport(fabric_), options);
    peer_ = MakeInProcTransport(fabric_);
    local_.assign(kSlots, 0);
    remote_.assign(kSlots, 0);
    auto local_reg = faulty_->Register(local_.data(), local_.size());
    auto remote_reg = peer_->Register(remote_.data(), remote_.size());
    ASSERT_TRUE(local_reg.ok() && remote_reg.ok());
    local_reg_ = *std::move(local_reg);
    remote_reg_ = *std::move(remote_reg);
    auto ep = faulty_->Connect(peer_->address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    ep_ = *std::move(ep);
  }

  // Puts byte i+1 into slot i for i < n and returns which completed OK.
  std::vector<bool> PutSlots(int n) {
    for (int i = 0; i < n; ++i) local_[i] = static_cast<uint8_t>(i + 1);
    Completions done(n);
    for (int i = 0; i < n; ++i) ep_->Put(&local_[i], 1, remote_reg_->Describe(), i, done.For(i));
    EXPECT_TRUE(done.WaitFor(n));
    std::vector<bool> ok(n);
    for (int i = 0; i < n; ++i) {
      ok[i] = done.status(i).ok();
      if (!ok[i]) {
        EXPECT_EQ(done.status(i).code(), absl::StatusCode::kUnavailable);
        EXPECT_THAT(done.status(i).message(), HasSubstr("dropped by FaultyTransport"));
      }
    }
    return ok;
  }

  static constexpr int kSlots = 200;
  std::shared_ptr<InProcFabric> fabric_ = MakeInProcFabric();
  std::vector<uint8_t> local_, remote_;
  std::unique_ptr<Transport> faulty_, peer_;
  std::unique_ptr<MemoryRegistration> local_reg_, remote_reg_;
  std::shared_ptr<Endpoint> ep_;
};

TEST_F(FaultyTransportTest, NamesTheTransportItWraps) {
  Start({});
  EXPECT_EQ(faulty_->name(), "faulty(inproc)");
}

TEST_F(FaultyTransportTest, DroppedOperationsAreNotPerformedAndTheDropsFollowTheSeed) {
  Start({.drop_probability = 0.5, .seed = 42});
  const std::vector<bool> ok = PutSlots(kSlots);
  int dropped = 0;
  for (int i = 0; i < kSlots; ++i) {
    EXPECT_EQ(remote_[i], ok[i] ? i + 1 : 0) << "slot " << i;
    dropped += ok[i] ? 0 : 1;
  }
  // 200 fair draws: far from none and from all (binomial, p(outside 60..140) < 1e-8).
  EXPECT_GT(dropped, 60);
  EXPECT_LT(dropped, 140);

  Start({.drop_probability = 0.5, .seed = 42});
  EXPECT_EQ(PutSlots(kSlots), ok);
  Start({.drop_probability = 0.5, .seed = 43});
  EXPECT_NE(PutSlots(kSlots), ok);
}

TEST_F(FaultyTransportTest, FailsEveryOperationAfterTheFirstN) {
  Start({.fail_after = 3});
  Completions done(6);
  ep_->Put(&local_[0], 1, remote_reg_->Describe(), 0, done.For(0));
  ep_->Send(1, "m", done.For(1));
  ep_->Flush(done.For(2));
  ep_->Put(&local_[0], 1, remote_reg_->Describe(), 0, done.For(3));
  ep_->Get(&local_[0], 1, remote_reg_->Describe(), 0, done.For(4));
  ep_->Flush(done.For(5));
  ASSERT_TRUE(done.WaitFor(6));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(done.status(i).ok()) << i << ": " << done.status(i);
  for (int i = 3; i < 6; ++i) {
    EXPECT_EQ(done.status(i).code(), absl::StatusCode::kUnavailable) << i;
    EXPECT_THAT(done.status(i).message(), HasSubstr("fail_after=3"));
  }
}

TEST_F(FaultyTransportTest, DelaysOperationsOffTheCallersThreadAndKeepsTheirOrder) {
  constexpr absl::Duration kDelay = absl::Milliseconds(300);
  Start({.delay = kDelay});
  std::vector<int> order;
  absl::Mutex mu;
  peer_->SetMessageHandler(9, [&](std::string_view payload) {
    absl::MutexLock lock(&mu);
    order.push_back(payload[0] == 'a' ? remote_[0] : -1);
  });
  local_[0] = 42;
  const absl::Time start = absl::Now();
  absl::Notification put_done;
  std::thread::id completion_thread;
  ep_->Put(&local_[0], 1, remote_reg_->Describe(), 0, [&](absl::Status status) {
    EXPECT_TRUE(status.ok()) << status;
    completion_thread = std::this_thread::get_id();
    put_done.Notify();
  });
  Completions sent(1);
  ep_->Send(9, "a", sent.For(0));  // delayed too, and still after the put
  ASSERT_TRUE(put_done.WaitForNotificationWithTimeout(kDeadline));
  EXPECT_GE(absl::Now() - start, kDelay);
  EXPECT_NE(completion_thread, std::this_thread::get_id());
  ASSERT_TRUE(sent.WaitFor(1));
  ASSERT_TRUE(FlushSync(*ep_).ok());
  absl::MutexLock lock(&mu);
  EXPECT_THAT(order, ::testing::ElementsAre(42));
}

TEST_F(FaultyTransportTest, DestroyingItFailsTheDelayedOperations) {
  Start({.delay = absl::Hours(1)});
  Completions done(3);
  for (int i = 0; i < 3; ++i) ep_->Put(&local_[0], 1, remote_reg_->Describe(), 0, done.For(i));
  faulty_.reset();
  EXPECT_EQ(done.total(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(done.status(i).code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace strata::transport
