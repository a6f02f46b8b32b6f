// DecodeService over real gRPC, under concurrency: every Generate stream ends with a clean status
// and the worker survives — when the prefill call fails at once (its address is no prefill
// worker), when clients cancel mid-stream, and when streams simply run to the end. Before the
// reactor stopped finishing its call under its own lock, these crashed the process within a few
// hundred calls ("Mutex unlocked when destroyed or not locked", or a use after free): gRPC ran
// OnDone, which deletes the reactor, on another thread while the lock was still held.
#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "decode/decode_service.h"
#include "decode/scheduler.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/grpc_options.h"
#include "tests/unit/engine/micro_model.h"
#include "transport/transport.h"

namespace strata {
namespace {

using testing::Instance;
using testing::MicroModel;

class DecodeServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { micro_ = new MicroModel(7); }
  static void TearDownTestSuite() {
    delete micro_;
    micro_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(micro_->ok());
    instance_ = std::make_unique<Instance>(micro_->weights(), 256);
    fabric_ = transport::MakeInProcFabric();
    transport_ = transport::MakeInProcTransport(fabric_);
    scheduler_ = std::make_unique<decode::Scheduler>(
        instance_->model, instance_->pool,
        decode::SchedulerOptions{.max_batch = 16, .max_queue = 4096, .chunk_tokens = 256, .eos_id = -1,
                                 .num_tokens = testing::kMicroVocab});
    auto service = decode::DecodeService::Create(*scheduler_, instance_->pool, *transport_,
                                                 {.heartbeat = absl::Milliseconds(100)});
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = std::move(*service);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    proto::ConfigureInternalServer(builder);  // the service pings its prefill workers
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::Decode::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (server_) server_->Shutdown();
    server_.reset();
    service_.reset();
    scheduler_.reset();
  }

  static v1::DecodeRequest MakeRequest(const std::string& id, int prompt, int max_tokens) {
    v1::DecodeRequest r;
    r.set_request_id(id);
    for (int i = 0; i < prompt; ++i) r.add_prompt((i * 37 + 11) % static_cast<int>(testing::kMicroVocab));
    r.set_max_tokens(max_tokens);
    return r;
  }

  // Runs `calls` Generate streams from `threads` client threads; `cancel_after` > 0 cancels each
  // stream after that many events. Returns how many ended with each status code.
  std::vector<int> Run(int threads, int calls, const std::string& prefill_address, int prompt, int max_tokens,
                       int cancel_after) {
    std::vector<std::atomic<int>> codes(17);
    std::atomic<int> next{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        for (int i = next++; i < calls; i = next++) {
          v1::DecodeRequest req = MakeRequest(absl::StrCat("r", i), prompt, max_tokens);
          req.set_prefill_address(prefill_address);
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
          auto reader = stub_->Generate(&ctx, req);
          v1::TokenEvent e;
          int events = 0;
          while (reader->Read(&e)) {
            if (cancel_after > 0 && ++events == cancel_after) ctx.TryCancel();
          }
          codes[static_cast<size_t>(reader->Finish().error_code())]++;
        }
      });
    }
    for (auto& t : pool) t.join();
    std::vector<int> out;
    for (auto& c : codes) out.push_back(c.load());
    return out;
  }

  static MicroModel* micro_;
  std::unique_ptr<Instance> instance_;
  std::shared_ptr<transport::InProcFabric> fabric_;
  std::unique_ptr<transport::Transport> transport_;
  std::unique_ptr<decode::Scheduler> scheduler_;
  std::unique_ptr<decode::DecodeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Decode::Stub> stub_;
};

MicroModel* DecodeServiceTest::micro_ = nullptr;

// Nothing listens on port 1: every prefill call fails at once, and each stream ends right after
// its admission — the pattern that crashed the worker most reliably.
TEST_F(DecodeServiceTest, ThousandStreamsWhosePrefillFailsAtOnceAllEndUnavailable) {
  const std::vector<int> codes = Run(24, 1000, "127.0.0.1:1", 40, 4, 0);
  EXPECT_EQ(codes[grpc::StatusCode::UNAVAILABLE], 1000);
  // Stats are published after each loop round: give the last one a moment.
  for (int i = 0; i < 200 && scheduler_->stats().running != 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(scheduler_->stats().running, 0);
}

// Streams cancelled after their first token, beside streams that run to the end. Both groups use
// the same request ids (r0 … r199): the worker must keep them apart.
TEST_F(DecodeServiceTest, StreamsCancelledMidwayAndFinishedStreamsAllEndCleanly) {
  std::vector<int> cancelled, finished;
  std::thread a([&] { cancelled = Run(12, 200, "", 20, 64, 1); });
  std::thread b([&] { finished = Run(12, 200, "", 20, 8, 0); });
  a.join();
  b.join();
  EXPECT_EQ(finished[grpc::StatusCode::OK], 200);
  // A cancelled stream may still have finished first (it had few tokens left).
  EXPECT_EQ(cancelled[grpc::StatusCode::CANCELLED] + cancelled[grpc::StatusCode::OK], 200);
  for (int i = 0; i < 200 && (scheduler_->stats().running != 0 || instance_->pool.free_blocks() != 256); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(scheduler_->stats().running, 0);
  EXPECT_EQ(instance_->pool.free_blocks(), 256);
}

// A stream whose request waits (here: for a prefill worker that never answers) gets empty events
// every `heartbeat`, so the router can tell it from a hung worker.
class SilentPrefill final : public v1::Prefill::CallbackService {
 public:
  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context, const v1::PrefillRequest*,
                                    v1::PrefillReply*) override {
    // Never finished by us: cancelled by the client, or failed at the server's shutdown.
    class Held final : public grpc::ServerUnaryReactor {
     public:
      void OnCancel() override { Finish(grpc::Status::CANCELLED); }
      void OnDone() override { delete this; }
    };
    (void)context;
    return new Held;
  }
};

TEST_F(DecodeServiceTest, AQuietStreamGetsKeepAlives) {
  SilentPrefill silent;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  proto::ConfigureInternalServer(builder);
  builder.RegisterService(&silent);
  std::unique_ptr<grpc::Server> prefill = builder.BuildAndStart();
  ASSERT_NE(prefill, nullptr);

  v1::DecodeRequest req = MakeRequest("quiet", 30, 4);
  req.set_prefill_address(absl::StrCat("127.0.0.1:", port));
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  v1::TokenEvent e;
  int empty = 0;
  while (empty < 3 && reader->Read(&e)) {
    EXPECT_EQ(e.token_ids_size(), 0);
    EXPECT_EQ(e.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    ++empty;
  }
  EXPECT_EQ(empty, 3);
  ctx.TryCancel();
  while (reader->Read(&e)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  prefill->Shutdown();
}

// A failed prefill names the prefill worker in the trailers (the router retries elsewhere); the
// stream's own status says what failed.
TEST_F(DecodeServiceTest, AFailedPrefillIsNamedInTheTrailers) {
  v1::DecodeRequest req = MakeRequest("named", 30, 4);
  req.set_prefill_address("127.0.0.1:1");
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  v1::TokenEvent e;
  while (reader->Read(&e)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(status.error_message().find("prefill worker 127.0.0.1:1"), std::string::npos) << status.error_message();
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find("strata-prefill-failed");
  ASSERT_NE(it, trailers.end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "127.0.0.1:1");
  EXPECT_EQ(trailers.count("strata-served-by"), 1u);
}

// A prefill worker that records the target it was given and holds the call until cancelled.
class RecordingPrefill final : public v1::Prefill::CallbackService {
 public:
  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext*, const v1::PrefillRequest* request,
                                    v1::PrefillReply*) override {
    {
      absl::MutexLock lock(&mu_);
      target_ = request->target();
      got_ = true;
    }
    class Held final : public grpc::ServerUnaryReactor {
     public:
      void OnCancel() override { Finish(grpc::Status::CANCELLED); }
      void OnDone() override { delete this; }
    };
    return new Held;
  }
  bool WaitForCall(v1::KvTarget* target) {
    absl::MutexLock lock(&mu_);
    auto got = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return got_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&got), absl::Seconds(30))) return false;
    *target = target_;
    return true;
  }

 private:
  absl::Mutex mu_;
  v1::KvTarget target_ ABSL_GUARDED_BY(mu_);
  bool got_ ABSL_GUARDED_BY(mu_) = false;
};

// Issue #11's stale puts: a request is cancelled while its prefill worker still pushes; its blocks
// go back to the pool at once — so the prefill worker's later puts into them must not land. The
// decode worker lends each transfer only its own blocks and slot, and revokes the loan before the
// blocks can be reused. (Before, the target named the whole registered pool: the late put landed.)
TEST_F(DecodeServiceTest, PutsOfACancelledTransferNoLongerLand) {
  RecordingPrefill recording;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  proto::ConfigureInternalServer(builder);
  builder.RegisterService(&recording);
  std::unique_ptr<grpc::Server> prefill = builder.BuildAndStart();
  ASSERT_NE(prefill, nullptr);

  v1::DecodeRequest req = MakeRequest("stale", 300, 4);
  req.set_prefill_address(absl::StrCat("127.0.0.1:", port));
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  v1::KvTarget target;
  ASSERT_TRUE(recording.WaitForCall(&target));
  ASSERT_GE(target.block_ids_size(), 3);

  // The prefill worker's side: a transport of its own, a registered buffer to put from.
  std::unique_ptr<transport::Transport> sender = transport::MakeInProcTransport(fabric_);
  std::vector<uint8_t> bytes(static_cast<size_t>(target.block_bytes()), 0xAB);
  auto registration = sender->Register(bytes.data(), bytes.size());
  ASSERT_TRUE(registration.ok());
  auto ep = sender->Connect(target.transport_address());
  ASSERT_TRUE(ep.ok()) << ep.status();
  const transport::RemoteRegion pool{target.pool().address(), target.pool().length(), target.pool().key()};
  const uint64_t granted = static_cast<uint64_t>(target.block_ids(0)) * target.block_bytes();
  // While the transfer is live, its own blocks take puts; a block it was not lent does not.
  EXPECT_TRUE(transport::PutSync(**ep, bytes.data(), 64, pool, granted).ok());
  uint64_t other = 0;
  while (std::find(target.block_ids().begin(), target.block_ids().end(), static_cast<int32_t>(other)) !=
         target.block_ids().end()) {
    ++other;
  }
  EXPECT_FALSE(transport::PutSync(**ep, bytes.data(), 64, pool, other * target.block_bytes()).ok());

  ctx.TryCancel();
  v1::TokenEvent e;
  while (reader->Read(&e)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 500 && scheduler_->stats().running != 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(scheduler_->stats().running, 0);
  ASSERT_EQ(instance_->pool.free_blocks(), 256) << "the blocks are free for the next request";

  const uint8_t* block = instance_->pool.block(target.block_ids(1));
  const std::vector<uint8_t> before(block, block + 64);
  absl::Status late = transport::PutSync(**ep, bytes.data(), 64, pool,
                                         static_cast<uint64_t>(target.block_ids(1)) * target.block_bytes());
  EXPECT_FALSE(late.ok()) << "a late put of the cancelled transfer landed";
  EXPECT_EQ(std::vector<uint8_t>(block, block + 64), before);
  prefill->Shutdown();
}

}  // namespace
}  // namespace strata
