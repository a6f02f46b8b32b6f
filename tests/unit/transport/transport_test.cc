// Behaviour every Transport implementation promises (transport/transport.h), checked on the
// in-process transport and on UCX with its default transports and with tcp only.
#include "transport/transport.h"

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/test_util.h"

namespace strata::transport {
namespace {

using ::strata::transport::testing::Completions;
using ::strata::transport::testing::Fill;
using ::strata::transport::testing::FirstMismatch;
using ::strata::transport::testing::kDeadline;
using ::testing::HasSubstr;

struct Kind {
  std::string label;
  bool ucx = false;
  std::string tls;  // UcxOptions::transports
  UcxOptions::PutPath put_path = UcxOptions::PutPath::kAuto;
  bool message_puts = false;  // what put_path resolves to
};

std::string KindName(const ::testing::TestParamInfo<Kind>& info) { return info.param.label; }

// A registered buffer of `size` bytes (plus slack so unaligned offsets still fit).
struct Buffer {
  std::vector<uint8_t> bytes;
  std::unique_ptr<MemoryRegistration> registration;
  RemoteRegion region;
};

class TransportTest : public ::testing::TestWithParam<Kind> {
 protected:
  std::unique_ptr<Transport> Make() {
    if (!GetParam().ucx) return MakeInProcTransport(fabric_);
    absl::StatusOr<std::unique_ptr<Transport>> t =
        MakeUcxTransport({.transports = GetParam().tls, .put_path = GetParam().put_path});
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : nullptr;
  }

  void SetUp() override {
    a_ = Make();
    b_ = Make();
    ASSERT_NE(a_, nullptr);
    ASSERT_NE(b_, nullptr);
    absl::StatusOr<std::shared_ptr<Endpoint>> ep = a_->Connect(b_->address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    ep_ = *std::move(ep);
  }

  void TearDown() override {
    ep_.reset();
    a_.reset();
    b_.reset();
  }

  static std::unique_ptr<Buffer> RegisterBuffer(Transport& t, size_t size) {
    auto buffer = std::make_unique<Buffer>();
    buffer->bytes.assign(size, 0);
    absl::StatusOr<std::unique_ptr<MemoryRegistration>> reg =
        t.Register(buffer->bytes.data(), size);
    EXPECT_TRUE(reg.ok()) << reg.status();
    if (!reg.ok()) return nullptr;
    buffer->registration = *std::move(reg);
    buffer->region = buffer->registration->Describe();
    return buffer;
  }

  std::shared_ptr<InProcFabric> fabric_ = MakeInProcFabric();
  std::unique_ptr<Transport> a_;
  std::unique_ptr<Transport> b_;
  std::shared_ptr<Endpoint> ep_;
};

TEST_P(TransportTest, DescribesTheRegisteredRegion) {
  std::unique_ptr<Buffer> buffer = RegisterBuffer(*b_, 4096);
  ASSERT_NE(buffer, nullptr);
  EXPECT_EQ(buffer->region.address, reinterpret_cast<uintptr_t>(buffer->bytes.data()));
  EXPECT_EQ(buffer->region.length, 4096u);
  EXPECT_FALSE(buffer->region.key.empty());
  EXPECT_FALSE(b_->address().empty());
  EXPECT_FALSE(b_->Register(nullptr, 16).ok());
  EXPECT_FALSE(b_->Register(buffer->bytes.data(), 0).ok());
}

TEST_P(TransportTest, AllocatedMemoryTakesPuts) {
  constexpr size_t kSize = 3 << 20;
  absl::StatusOr<std::unique_ptr<MemoryRegistration>> remote = b_->Allocate(kSize);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const RemoteRegion region = (*remote)->Describe();
  ASSERT_EQ(region.length, kSize);
  uint8_t* target = reinterpret_cast<uint8_t*>(region.address);
  EXPECT_EQ(std::count(target, target + kSize, 0), static_cast<int64_t>(kSize));
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kSize);
  ASSERT_NE(local, nullptr);
  Fill(local->bytes.data(), kSize, 5);
  ASSERT_TRUE(PutSync(*ep_, local->bytes.data(), kSize - 7, region, 7).ok());
  EXPECT_EQ(FirstMismatch(target + 7, kSize - 7, 5), kSize - 7);
  EXPECT_FALSE(b_->Allocate(0).ok());
}

TEST_P(TransportTest, PutsAndGetsEverySizeAtUnalignedOffsets) {
  constexpr size_t kMax = 8 << 20;
  constexpr size_t kSlack = 64;
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kMax + kSlack);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, kMax + kSlack);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  uint64_t seed = 1;
  for (size_t size :
       {size_t{1}, size_t{7}, size_t{64}, size_t{4099}, size_t{65536}, size_t{1} << 20, kMax}) {
    for (uint64_t offset : {uint64_t{0}, uint64_t{3}, uint64_t{61}}) {
      SCOPED_TRACE(::testing::Message() << "size " << size << " offset " << offset);
      ++seed;
      // The source also starts at an unaligned spot, so neither side is aligned.
      uint8_t* src = local->bytes.data() + 5;
      Fill(src, size, seed);
      ASSERT_TRUE(PutSync(*ep_, src, size, remote->region, offset).ok());
      ASSERT_TRUE(FlushSync(*ep_).ok());
      EXPECT_EQ(FirstMismatch(remote->bytes.data() + offset, size, seed), size);

      std::memset(local->bytes.data(), 0, local->bytes.size());
      uint8_t* dst = local->bytes.data() + 11;
      ASSERT_TRUE(GetSync(*ep_, dst, size, remote->region, offset).ok());
      EXPECT_EQ(FirstMismatch(dst, size, seed), size);
      EXPECT_EQ(local->bytes[10], 0);  // nothing written before or after the range
      EXPECT_EQ(local->bytes[11 + size], 0);
    }
  }
}

TEST_P(TransportTest, OutOfRangePutFailsAndWritesNothing) {
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, 256);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, 128);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  Fill(local->bytes.data(), 256, 9);

  absl::Status status = PutSync(*ep_, local->bytes.data(), 129, remote->region, 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  EXPECT_THAT(status.message(), HasSubstr("leaves the remote region of 128 bytes"));
  status = PutSync(*ep_, local->bytes.data(), 16, remote->region, 120);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  status = PutSync(*ep_, local->bytes.data(), 16, remote->region,
                   ~uint64_t{0} - 4);  // offset + len wraps
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  status = GetSync(*ep_, local->bytes.data(), 200, remote->region, 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  EXPECT_TRUE(FlushSync(*ep_).ok());
  EXPECT_EQ(std::count(remote->bytes.begin(), remote->bytes.end(), 0), 128);

  // The endpoint still works after refusing.
  EXPECT_TRUE(PutSync(*ep_, local->bytes.data(), 128, remote->region, 0).ok());
}

TEST_P(TransportTest, ForeignOrGarbageRegionKeyFailsCleanly) {
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, 64);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, 64);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  RemoteRegion garbage = remote->region;
  garbage.key = "definitely not a key";
  EXPECT_FALSE(PutSync(*ep_, local->bytes.data(), 8, garbage, 0).ok());
  garbage.key = remote->region.key;
  garbage.key.back() ^= 0x5a;
  EXPECT_FALSE(PutSync(*ep_, local->bytes.data(), 8, garbage, 0).ok());
  EXPECT_TRUE(PutSync(*ep_, local->bytes.data(), 8, remote->region, 0).ok());
}

TEST_P(TransportTest, ConnectingToAGarbageAddressFails) {
  for (const std::string& address :
       {std::string(), std::string("garbage"), std::string(300, '\x7f')}) {
    absl::StatusOr<std::shared_ptr<Endpoint>> ep = a_->Connect(address);
    EXPECT_FALSE(ep.ok()) << "address of " << address.size() << " bytes";
  }
  std::string corrupted = b_->address();
  corrupted[corrupted.size() / 2] ^= 0x11;
  EXPECT_FALSE(a_->Connect(corrupted).ok());
  std::string truncated = b_->address().substr(0, b_->address().size() - 3);
  EXPECT_FALSE(a_->Connect(truncated).ok());
}

// PutMany: every span lands (unaligned, of many sizes, zero-length ones skipped), the one
// completion comes after all of them, a message sent after it arrives after its bytes, and a span
// that leaves the region fails the whole call before anything is put.
TEST_P(TransportTest, PutManyLandsEverySpanOrNone) {
  constexpr size_t kSize = 1 << 20;
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kSize);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, kSize);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  Fill(local->bytes.data(), kSize, 21);
  std::vector<PutSpan> spans;
  std::vector<std::pair<uint64_t, size_t>> written;  // remote offset, length
  uint64_t at = 3;
  for (size_t len : {size_t{1}, size_t{0}, size_t{100}, size_t{4099}, size_t{65536}, size_t{7},
                     size_t{300000}}) {
    const size_t from = (at * 7) % (kSize - len);
    spans.push_back({local->bytes.data() + from, len, at});
    written.emplace_back(at, len);
    at += len + 13;
  }
  absl::Notification landed;
  std::atomic<bool> all_there{false};
  b_->SetMessageHandler(9, [&](std::string_view) {
    bool ok = true;
    for (size_t i = 0; i < spans.size(); ++i) {
      const auto* from = static_cast<const uint8_t*>(spans[i].local);
      ok = ok && std::memcmp(remote->bytes.data() + written[i].first, from, written[i].second) == 0;
    }
    all_there = ok;
    landed.Notify();
  });
  Completions done(2);
  ep_->PutMany(spans, remote->region, done.For(0));
  ep_->Send(9, "after", done.For(1));
  ASSERT_TRUE(done.WaitFor(2));
  ASSERT_TRUE(done.status(0).ok()) << done.status(0);
  ASSERT_TRUE(landed.WaitForNotificationWithTimeout(kDeadline));
  EXPECT_TRUE(all_there);
  // Bytes between the spans were not touched.
  EXPECT_EQ(remote->bytes[0], 0);
  EXPECT_EQ(remote->bytes[written[0].first + written[0].second], 0);

  std::fill(remote->bytes.begin(), remote->bytes.end(), 0);
  std::vector<PutSpan> bad = {{local->bytes.data(), 64, 0}, {local->bytes.data(), 64, kSize - 8}};
  Completions refused(1);
  ep_->PutMany(bad, remote->region, refused.For(0));
  ASSERT_TRUE(refused.WaitFor(1));
  EXPECT_EQ(refused.status(0).code(), absl::StatusCode::kOutOfRange) << refused.status(0);
  ASSERT_TRUE(FlushSync(*ep_).ok());
  EXPECT_EQ(std::count(remote->bytes.begin(), remote->bytes.end(), 0),
            static_cast<int64_t>(kSize));

  Completions empty(1);
  ep_->PutMany({}, remote->region, empty.For(0));
  ASSERT_TRUE(empty.WaitFor(1));
  EXPECT_TRUE(empty.status(0).ok()) << empty.status(0);
}

// Puts as messages: the receiver writes only inside memory it registered (a range within one
// registration, with that registration's key); anything else is refused (PermissionDenied) and
// nothing is written. (With RMA the rkey itself confines the put.)
TEST_P(TransportTest, MessagePutsOutsideRegisteredMemoryAreRefused) {
  if (!GetParam().message_puts) GTEST_SKIP() << "puts travel as UCX RMA here";
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, 4096);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, 4096);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  Fill(local->bytes.data(), 4096, 3);
  // A region that claims more than was registered: a put across the registration's end.
  RemoteRegion longer = remote->region;
  longer.length = 1 << 20;
  absl::Status status = PutSync(*ep_, local->bytes.data(), 64, longer, 4096 - 32);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  // One that starts past it.
  status = PutSync(*ep_, local->bytes.data(), 64, longer, 8192);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_EQ(std::count(remote->bytes.begin(), remote->bytes.end(), 0), 4096);
  // The endpoint still works after refusing, sub-ranges of a registration included.
  RemoteRegion tail = remote->region;
  tail.address += 1024;
  tail.length -= 1024;
  EXPECT_TRUE(PutSync(*ep_, local->bytes.data(), 3072, tail, 0).ok());
  EXPECT_TRUE(PutSync(*ep_, local->bytes.data(), 1024, remote->region, 0).ok());
  EXPECT_EQ(FirstMismatch(remote->bytes.data(), 1024, 3), 1024u);
  EXPECT_EQ(FirstMismatch(remote->bytes.data() + 1024, 3072, 3), 3072u);
}

// Dropping the endpoint right after a PutMany does not cut it short: the puts land and their
// completion says so (with puts as messages, once the peer has answered).
TEST_P(TransportTest, PutsIssuedBeforeTheEndpointIsReleasedLand) {
  constexpr size_t kSpan = 64 << 10, kSpans = 48;
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kSpan * kSpans);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, kSpan * kSpans);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  Fill(local->bytes.data(), local->bytes.size(), 41);
  std::vector<PutSpan> spans;
  for (size_t i = 0; i < kSpans; ++i) {
    spans.push_back({local->bytes.data() + i * kSpan, kSpan, i * kSpan});
  }
  auto done = std::make_shared<Completions>(1);
  ep_->PutMany(spans, remote->region, done->For(0));
  ep_.reset();
  ASSERT_TRUE(done->WaitFor(1));
  ASSERT_TRUE(done->status(0).ok()) << done->status(0);
  EXPECT_EQ(FirstMismatch(remote->bytes.data(), kSpan * kSpans, 41), kSpan * kSpans);
}

TEST_P(TransportTest, MessagesArriveAfterThePutsIssuedBeforeThem) {
  constexpr int kRounds = 200;
  constexpr size_t kSlot = 16 << 10;
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kRounds * kSlot);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, kRounds * kSlot);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);

  absl::Mutex mu;
  std::vector<int> order;       // round numbers, as received
  std::vector<int> bad_rounds;  // rounds whose bytes had not landed when the message came
  b_->SetMessageHandler(7, [&](std::string_view payload) {
    const int round = std::stoi(std::string(payload));
    const bool landed =
        FirstMismatch(remote->bytes.data() + round * kSlot, kSlot, round + 100) == kSlot;
    absl::MutexLock lock(&mu);
    order.push_back(round);
    if (!landed) bad_rounds.push_back(round);
  });

  Completions done(2 * kRounds);
  for (int r = 0; r < kRounds; ++r) {
    uint8_t* src = local->bytes.data() + r * kSlot;
    Fill(src, kSlot, r + 100);
    ep_->Put(src, kSlot, remote->region, r * kSlot, done.For(2 * r));
    ep_->Send(7, std::to_string(r), done.For(2 * r + 1));
  }
  ASSERT_TRUE(done.WaitFor(2 * kRounds));
  for (int i = 0; i < 2 * kRounds; ++i)
    ASSERT_TRUE(done.status(i).ok()) << i << ": " << done.status(i);

  absl::MutexLock lock(&mu);
  auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return order.size() >= kRounds; };
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), kDeadline));
  EXPECT_THAT(bad_rounds, ::testing::IsEmpty());
  for (int r = 0; r < kRounds; ++r) EXPECT_EQ(order[r], r);
}

TEST_P(TransportTest, ConcurrentOperationsFromManyThreadsCompleteExactlyOnce) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 400;
  constexpr size_t kSlot = 4096;
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kThreads * kSlot);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, kThreads * kSlot);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  absl::Mutex mu;
  int messages = 0;  // guarded by mu
  b_->SetMessageHandler(3, [&](std::string_view) {
    absl::MutexLock lock(&mu);
    ++messages;
  });

  Completions done(kThreads * kPerThread);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint8_t* slot = local->bytes.data() + t * kSlot;
      Fill(slot, kSlot, t);
      for (int i = 0; i < kPerThread; ++i) {
        const size_t op = t * kPerThread + i;
        switch (i % 4) {
          case 0:
            ep_->Put(slot, kSlot, remote->region, t * kSlot, done.For(op));
            break;
          case 1:
            ep_->Get(slot, kSlot, remote->region, t * kSlot, done.For(op));
            break;
          case 2:
            ep_->Send(3, "x", done.For(op));
            break;
          default:
            ep_->Flush(done.For(op));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(done.WaitFor(kThreads * kPerThread));
  for (size_t op = 0; op < kThreads * kPerThread; ++op) {
    EXPECT_EQ(done.calls(op), 1) << op;
    EXPECT_TRUE(done.status(op).ok()) << op << ": " << done.status(op);
  }
  // Every message reaches the handler, once (the peer runs handlers on its own schedule).
  absl::MutexLock lock(&mu);
  auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return messages >= kThreads * kPerThread / 4;
  };
  EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), kDeadline));
  EXPECT_EQ(messages, kThreads * kPerThread / 4);
}

TEST_P(TransportTest, DestroyingATransportCompletesOperationsInFlight) {
  constexpr int kOps = 64;
  constexpr size_t kSize = 1 << 20;
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kSize);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, kSize);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  Completions done(kOps + 1);
  for (int i = 0; i < kOps; ++i)
    ep_->Put(local->bytes.data(), kSize, remote->region, 0, done.For(i));
  a_.reset();
  // Every completion has been called by the time the transport is gone.
  EXPECT_EQ(done.total(), static_cast<size_t>(kOps));
  for (int i = 0; i < kOps; ++i) EXPECT_EQ(done.calls(i), 1) << i;

  // The endpoint outlives its transport: new operations fail instead of hanging.
  ep_->Put(local->bytes.data(), 16, remote->region, 0, done.For(kOps));
  ASSERT_TRUE(done.WaitFor(kOps + 1));
  EXPECT_FALSE(done.status(kOps).ok());
}

TEST_P(TransportTest, DestroyingATransportFailsQueuedOperations) {
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, 4096);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, 4096);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  // The first completion holds the progress thread, so the operations after it stay queued.
  absl::Notification entered, release;
  ep_->Flush([&](absl::Status) {
    entered.Notify();
    release.WaitForNotification();
  });
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(kDeadline));
  constexpr int kOps = 20;
  Completions done(kOps);
  for (int i = 0; i < kOps; ++i)
    ep_->Put(local->bytes.data(), 4096, remote->region, 0, done.For(i));
  std::thread destroyer([&] { a_.reset(); });
  const bool all_failed_in_time = done.WaitFor(kOps);
  release.Notify();
  destroyer.join();
  ASSERT_TRUE(all_failed_in_time);
  for (int i = 0; i < kOps; ++i) {
    EXPECT_EQ(done.calls(i), 1);
    EXPECT_EQ(done.status(i).code(), absl::StatusCode::kCancelled) << done.status(i);
  }
}

TEST_P(TransportTest, PeerGoneFailsOperations) {
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, 4096);
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, 4096);
  ASSERT_NE(local, nullptr);
  ASSERT_NE(remote, nullptr);
  ASSERT_TRUE(PutSync(*ep_, local->bytes.data(), 4096, remote->region, 0).ok());
  const RemoteRegion region = remote->region;
  remote->registration.reset();
  b_.reset();
  // Either the put or the flush after it must report the loss, within the deadline.
  auto state = std::make_shared<Completions>(2);
  ep_->Put(local->bytes.data(), 4096, region, 0, state->For(0));
  ep_->Flush(state->For(1));
  ASSERT_TRUE(state->WaitFor(2));
  EXPECT_FALSE(state->status(0).ok() && state->status(1).ok());
}

// A grant takes puts into its ranges only, and none once revoked — where the receiver applies
// puts itself (in-process, message puts); one-sided RMA cannot be stopped, and says so.
TEST_P(TransportTest, GrantsTakePutsInTheirRangesOnlyAndNoneOnceRevoked) {
  constexpr size_t kBlock = 4096;
  std::unique_ptr<Buffer> remote = RegisterBuffer(*b_, 4 * kBlock);
  std::unique_ptr<Buffer> local = RegisterBuffer(*a_, kBlock);
  ASSERT_NE(remote, nullptr);
  ASSERT_NE(local, nullptr);
  const std::vector<ByteRange> ranges = {{kBlock, kBlock}, {3 * kBlock, kBlock}};
  absl::StatusOr<std::unique_ptr<Grant>> grant = b_->GrantAccess(*remote->registration, ranges);
  ASSERT_TRUE(grant.ok()) << grant.status();
  const bool enforced = (*grant)->enforced();
  EXPECT_EQ(enforced, !GetParam().ucx || GetParam().message_puts);
  const RemoteRegion region = (*grant)->Describe();
  EXPECT_EQ(region.address, remote->region.address);
  EXPECT_NE(region.key, remote->region.key);
  Fill(local->bytes.data(), kBlock, 9);
  EXPECT_TRUE(PutSync(*ep_, local->bytes.data(), kBlock, region, kBlock).ok());
  EXPECT_TRUE(PutSync(*ep_, local->bytes.data(), 100, region, 3 * kBlock + 50).ok());
  EXPECT_EQ(FirstMismatch(remote->bytes.data() + kBlock, kBlock, 9), kBlock);
  if (enforced) {
    // Block 2 was not lent, nor a span crossing from block 1 into it.
    EXPECT_FALSE(PutSync(*ep_, local->bytes.data(), 64, region, 2 * kBlock).ok());
    EXPECT_FALSE(PutSync(*ep_, local->bytes.data(), 64, region, 2 * kBlock - 32).ok());
    EXPECT_EQ(std::count(remote->bytes.begin() + 2 * kBlock, remote->bytes.begin() + 3 * kBlock, 0),
              static_cast<int64_t>(kBlock));
  }
  grant->reset();  // revoked
  if (enforced) {
    Fill(local->bytes.data(), kBlock, 10);
    EXPECT_FALSE(PutSync(*ep_, local->bytes.data(), kBlock, region, kBlock).ok());
    EXPECT_EQ(FirstMismatch(remote->bytes.data() + kBlock, kBlock, 9), kBlock) << "a revoked grant took a put";
  }
  // The registration itself still takes puts; bad ranges are refused.
  EXPECT_TRUE(PutSync(*ep_, local->bytes.data(), 64, remote->region, 0).ok());
  EXPECT_FALSE(b_->GrantAccess(*remote->registration, {}).ok());
  const ByteRange outside{3 * kBlock, 2 * kBlock};
  EXPECT_FALSE(b_->GrantAccess(*remote->registration, absl::MakeConstSpan(&outside, 1)).ok());
}

INSTANTIATE_TEST_SUITE_P(All, TransportTest,
                         ::testing::Values(Kind{.label = "inproc"},
                                           Kind{.label = "ucx_default", .ucx = true,
                                                .message_puts = true},
                                           Kind{.label = "ucx_tcp", .ucx = true, .tls = "tcp",
                                                .message_puts = true},
                                           Kind{.label = "ucx_tcp_rma", .ucx = true, .tls = "tcp",
                                                .put_path = UcxOptions::PutPath::kRma}),
                         KindName);

}  // namespace
}  // namespace strata::transport
