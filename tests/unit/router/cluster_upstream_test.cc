// ClusterUpstream against fake decode workers over real gRPC: a request moves to another decode
// worker when its worker dies, hangs or turns it away, and continues where it was; a prefill
// failure is retried without that prefill worker; a worker's own verdict on a request is final;
// the number of attempts is bounded; /healthz readiness follows the live decode workers.
//
// The fake worker "generates" token p at position p (the prompt's length, then one more per
// token), so a stream that moves shows exactly whether the new worker got the prompt plus the
// tokens already streamed: the client must see 0+P, 1+P, … as from an undisturbed run.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/grpc_options.h"
#include "registry/registry.h"
#include "router/cluster_upstream.h"
#include "router/policy.h"
#include "engine/kv/block_key.h"
#include "registry/prefix_index.h"
#include "strata/v1/worker.grpc.pb.h"

namespace strata::router {
namespace {

// What a fake decode worker does with a Generate call.
struct Script {
  int tokens_then_die = -1;       // stream this many tokens, then break off like a crash
  bool hang = false;              // send nothing, ever (until cancelled)
  bool prefill_fails = false;     // fail like a worker whose prefill worker failed
  grpc::StatusCode refuse = grpc::StatusCode::OK;  // a live worker's error, at once
};

class FakeDecode final : public v1::Decode::CallbackService {
 public:
  explicit FakeDecode(Script script) : script_(script) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    proto::ConfigureInternalServer(builder);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeDecode() override { server_->Shutdown(std::chrono::system_clock::now()); }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  std::vector<v1::DecodeRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

  grpc::ServerWriteReactor<v1::TokenEvent>* Generate(grpc::CallbackServerContext* context,
                                                     const v1::DecodeRequest* request) override {
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*request);
    }
    return new Stream(script_, context, *request);
  }

 private:
  // Writes one token per write; ends as the script says.
  class Stream final : public grpc::ServerWriteReactor<v1::TokenEvent> {
   public:
    Stream(const Script& script, grpc::CallbackServerContext* context, const v1::DecodeRequest& r)
        : script_(script), position_(r.prompt_size()), left_(r.max_tokens()) {
      if (script.refuse != grpc::StatusCode::OK || script.prefill_fails) {
        context->AddTrailingMetadata("strata-served-by", "decode");
        if (script.prefill_fails) {
          context->AddTrailingMetadata("strata-prefill-failed", r.prefill_address());
          Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "prefill worker: connection refused"));
        } else {
          Finish(grpc::Status(script.refuse, "refused by the fake worker"));
        }
        return;
      }
      // A worker that will "crash" sends no trailers, as a dead process cannot.
      if (!script.hang && script.tokens_then_die < 0) context->AddTrailingMetadata("strata-served-by", "decode");
      if (!script.hang) Next();
    }
    void OnWriteDone(bool ok) override {
      if (!ok) return Finish(grpc::Status::CANCELLED);
      Next();
    }
    void OnCancel() override {
      if (script_.hang) Finish(grpc::Status::CANCELLED);
    }
    void OnDone() override { delete this; }

   private:
    void Next() {
      if (script_.tokens_then_die >= 0 && sent_ == script_.tokens_then_die) {
        // A crash sends no trailers: what the router sees is a stream that breaks.
        return Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset"));
      }
      event_.Clear();
      event_.add_token_ids(static_cast<int32_t>(position_++));
      ++sent_;
      if (--left_ == 0) {
        event_.set_finish_reason(v1::FINISH_REASON_LENGTH);
        return StartWriteAndFinish(&event_, grpc::WriteOptions(), grpc::Status::OK);
      }
      StartWrite(&event_);
    }
    const Script script_;
    int64_t position_, left_;
    int sent_ = 0;
    v1::TokenEvent event_;
  };

  const Script script_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  std::vector<v1::DecodeRequest> requests_ ABSL_GUARDED_BY(mu_);
};

// The events of one call.
struct Sink {
  absl::Mutex mu;
  std::vector<int32_t> tokens;
  int keepalives = 0;
  UpstreamEvent final;
  absl::Notification done;
  std::function<void(UpstreamEvent)> Callback() {
    return [this](UpstreamEvent e) {
      {
        absl::MutexLock lock(&mu);
        tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
        if (!e.done && e.tokens.empty()) ++keepalives;
        if (e.done) final = e;
      }
      if (e.done) done.Notify();
    };
  }
};

class ClusterUpstreamTest : public ::testing::Test {
 protected:
  ClusterUpstreamTest() : registry_(registry::MakeInMemoryRegistry(Clock::Real())) {}

  void AddWorker(const std::string& role, const std::string& id, const std::string& address) {
    ASSERT_TRUE(registry_
                    ->Put({.id = id, .role = role, .grpc_address = address, .model = "m",
                           .load = {.free_kv_blocks = 100, .total_kv_blocks = 100}},
                          absl::Minutes(1))
                    .ok());
  }

  void Start(ClusterOptions options = {}) {
    options.model = "m";
    if (options.inactivity_timeout == ClusterOptions{}.inactivity_timeout) {
      options.inactivity_timeout = absl::Milliseconds(500);
    }
    upstream_ = std::make_unique<ClusterUpstream>(*registry_, std::move(*MakePolicy("round_robin")), options);
    ASSERT_TRUE(upstream_->Refresh().ok());
  }

  // Runs one request of a 10-token prompt for `max_tokens`; waits for its end.
  void Run(Sink& sink, int64_t max_tokens = 6) {
    UpstreamRequest r{.request_id = "req", .prompt = std::vector<int32_t>(10, 1), .max_tokens = max_tokens};
    call_ = upstream_->Start(std::move(r), sink.Callback());
    ASSERT_TRUE(sink.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  }

  static std::vector<int32_t> Positions(int from, int n) {
    std::vector<int32_t> v;
    for (int i = 0; i < n; ++i) v.push_back(from + i);
    return v;
  }

  std::unique_ptr<registry::Registry> registry_;
  std::unique_ptr<ClusterUpstream> upstream_;
  std::unique_ptr<UpstreamCall> call_;
};

TEST_F(ClusterUpstreamTest, ADecodeWorkerThatDiesMidStreamIsReplacedAndTheStreamContinues) {
  FakeDecode dying({.tokens_then_die = 3}), healthy({});
  AddWorker("decode", "d-dying", dying.address());
  AddWorker("decode", "d-healthy", healthy.address());
  Start();
  // round_robin starts where it likes: run until the dying worker has had a request.
  for (int i = 0; i < 2 && dying.requests().empty(); ++i) {
    const size_t healthy_before = healthy.requests().size();
    Sink s;
    Run(s);
    EXPECT_TRUE(s.final.status.ok()) << s.final.status;
    EXPECT_EQ(s.tokens, Positions(10, 6));
    EXPECT_EQ(s.final.finish, FinishReason::kLength);
    if (!dying.requests().empty()) {
      const std::vector<v1::DecodeRequest> received = healthy.requests();  // a copy: keep it
      ASSERT_EQ(received.size(), healthy_before + 1);
      const v1::DecodeRequest& moved = received.back();
      EXPECT_EQ(moved.prompt_size(), 13);  // the prompt plus the 3 tokens already streamed
      EXPECT_EQ(moved.max_tokens(), 3);
      EXPECT_EQ(moved.prompt(12), 12);
      return;
    }
  }
  FAIL() << "the dying worker was never chosen";
}

TEST_F(ClusterUpstreamTest, AHungDecodeWorkerIsAbandonedAfterTheInactivityTimeout) {
  FakeDecode hung({.hang = true}), healthy({});
  AddWorker("decode", "d-hung", hung.address());
  Start();
  Sink first;
  UpstreamRequest r{.request_id = "req", .prompt = std::vector<int32_t>(10, 1), .max_tokens = 4};
  call_ = upstream_->Start(std::move(r), first.Callback());
  absl::SleepFor(absl::Milliseconds(100));
  AddWorker("decode", "d-healthy", healthy.address());  // appears while the first one hangs
  ASSERT_TRUE(upstream_->Refresh().ok());
  ASSERT_TRUE(first.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(first.final.status.ok()) << first.final.status;
  EXPECT_EQ(first.tokens, Positions(10, 4));
  EXPECT_EQ(healthy.requests().size(), 1u);
}

TEST_F(ClusterUpstreamTest, APrefillFailureRetriesWithAnotherPrefillWorkerAndSuspectsTheFirst) {
  FakeDecode complains({.prefill_fails = true});
  AddWorker("decode", "d", complains.address());
  AddWorker("prefill", "p-bad", "127.0.0.1:1");
  AddWorker("prefill", "p-other", "127.0.0.1:2");
  Start({.max_attempts = 2});
  Sink sink;
  Run(sink);
  // Both attempts went to the (only) decode worker, each with a different prefill worker.
  const auto requests = complains.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_NE(requests[0].prefill_address(), requests[1].prefill_address());
  EXPECT_EQ(sink.final.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(sink.final.status.message().find("prefill worker p-"), absl::string_view::npos) << sink.final.status;
  EXPECT_EQ(sink.final.status.message().find("decode worker unavailable"), absl::string_view::npos);
  EXPECT_NE(sink.final.status.message().find("gave up after 2 attempts"), absl::string_view::npos)
      << sink.final.status;
}

TEST_F(ClusterUpstreamTest, AFullQueueSendsTheRequestElsewhere) {
  FakeDecode full({.refuse = grpc::StatusCode::RESOURCE_EXHAUSTED}), healthy({});
  AddWorker("decode", "d-full", full.address());
  AddWorker("decode", "d-healthy", healthy.address());
  Start();
  for (int i = 0; i < 2; ++i) {
    Sink sink;
    Run(sink);
    EXPECT_TRUE(sink.final.status.ok()) << sink.final.status;
    EXPECT_EQ(sink.tokens, Positions(10, 6));
  }
  EXPECT_EQ(healthy.requests().size(), 2u);
}

TEST_F(ClusterUpstreamTest, AWorkersOwnVerdictIsFinal) {
  FakeDecode strict({.refuse = grpc::StatusCode::INVALID_ARGUMENT}), healthy({});
  AddWorker("decode", "d-strict", strict.address());
  Start();
  Sink sink;
  Run(sink);
  EXPECT_EQ(sink.final.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(sink.final.status.message().find("decode worker d-strict"), absl::string_view::npos);
  EXPECT_EQ(strict.requests().size(), 1u);
}

TEST_F(ClusterUpstreamTest, AttemptsAreBoundedAndTheErrorSaysWhatFailed) {
  FakeDecode a({.tokens_then_die = 1}), b({.tokens_then_die = 1}), c({.tokens_then_die = 1});
  AddWorker("decode", "d-a", a.address());
  AddWorker("decode", "d-b", b.address());
  AddWorker("decode", "d-c", c.address());
  Start({.max_attempts = 2});
  Sink sink;
  Run(sink);
  EXPECT_EQ(sink.final.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(sink.final.status.message().find("gave up after 2 attempts"), absl::string_view::npos)
      << sink.final.status;
  EXPECT_EQ(sink.tokens, Positions(10, 2));  // one token from each attempt, in order
  EXPECT_EQ(a.requests().size() + b.requests().size() + c.requests().size(), 2u);
}

TEST_F(ClusterUpstreamTest, ReadinessFollowsTheLiveDecodeWorkers) {
  Start();
  EXPECT_EQ(upstream_->Ready().code(), absl::StatusCode::kUnavailable);
  FakeDecode d({});
  AddWorker("decode", "d", d.address());
  ASSERT_TRUE(upstream_->Refresh().ok());
  EXPECT_TRUE(upstream_->Ready().ok());
  upstream_->Suspect("d");
  EXPECT_EQ(upstream_->Ready().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClusterUpstreamTest, ACancelledCallEndsCancelledAndIsNotRetried) {
  FakeDecode hung({.hang = true}), other({});
  AddWorker("decode", "d-hung", hung.address());
  Start({.inactivity_timeout = absl::Seconds(30)});
  Sink sink;
  UpstreamRequest r{.request_id = "req", .prompt = std::vector<int32_t>(10, 1), .max_tokens = 4};
  call_ = upstream_->Start(std::move(r), sink.Callback());
  absl::SleepFor(absl::Milliseconds(100));
  call_->Cancel();
  ASSERT_TRUE(sink.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(sink.final.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(other.requests().empty());
}

// least_load sends prompts to the prefill worker with the fewest prompt tokens still to compute:
// the reported backlog plus what this router sent it since.
TEST(LeastLoadTest, PrefillByTokensStillToCompute) {
  auto policy = *MakePolicy("least_load");
  registry::ServiceRecord busy{.id = "p-busy", .load = {.queued_tokens = 60000}};
  registry::ServiceRecord idle{.id = "p-idle", .load = {.queued_tokens = 100}};
  registry::ServiceRecord d{.id = "d", .load = {.free_kv_blocks = 100}};
  std::vector<Candidate> decode = {{&d}};
  auto c = policy->Choose({{&busy}, {&idle}}, decode, 100, 1);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->prefill, 1);
  // The idle one was just sent a 64K-token prompt: the busy one is now the shorter queue.
  c = policy->Choose({{&busy, 0, 0}, {&idle, 1, 65536}}, decode, 100, 1);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->prefill, 0);
}

// kv_aware counts a worker's cached prefix of the request as work it need not do.
TEST(KvAwareTest, RoutesToWhereThePrefixIsCachedUnlessThatWorkerIsFull) {
  auto policy = *MakePolicy("kv_aware", {.local_prefill_limit = 512});
  EXPECT_TRUE(policy->uses_prefix_index());
  registry::ServiceRecord p0{.id = "p0", .load = {.queued_tokens = 0}};
  registry::ServiceRecord p1{.id = "p1", .load = {.queued_tokens = 2000}};
  registry::ServiceRecord idle{.id = "d-idle", .load = {.running_requests = 0, .free_kv_blocks = 100}};
  registry::ServiceRecord warm{.id = "d-warm", .load = {.running_requests = 4, .free_kv_blocks = 100}};
  // No prefix anywhere: least work is the idle decode worker and the empty prefill queue.
  auto c = policy->Choose({{&p0}, {&p1}}, {{&idle}, {&warm}}, 10000, 80);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->decode, 0);
  EXPECT_EQ(c->prefill, 0);
  // d-warm holds 9800 of the 10000 tokens: computing 200 there beats 10000 anywhere else.
  c = policy->Choose({{&p0}, {&p1}}, {{&idle}, {&warm, 0, 0, 9800}}, 10000, 80);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->decode, 1);
  // ...but not when the rest is past what a decode worker computes itself (512): then it would
  // go to a prefill worker anyway, and the busier decode worker loses.
  c = policy->Choose({{&p0}, {&p1}}, {{&idle}, {&warm, 0, 0, 9000}}, 10000, 80);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->decode, 0);
  // A prefill worker holding the prefix beats an emptier queue that would compute it all.
  c = policy->Choose({{&p0}, {&p1, 0, 0, 9000}}, {{&idle}, {&warm}}, 10000, 80);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->prefill, 1);
  // A decode worker without room for the request's blocks comes last, prefix or not.
  registry::ServiceRecord full{.id = "d-full", .load = {.free_kv_blocks = 10}};
  c = policy->Choose({{&p0}}, {{&full, 0, 0, 9800}, {&idle}}, 10000, 80);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->decode, 1);
}

// The upstream asks the index with the keys the workers cache under (their published scope, the
// request's tenant as namespace) and routes by the answer.
TEST(KvAwareTest, TheUpstreamLooksTheRequestUpUnderItsTenant) {
  SimulatedClock clock;
  auto registry = registry::MakeInMemoryRegistry(clock);
  auto index = registry::MakeInMemoryPrefixIndex();
  const engine::KeyScope scope{0xabc, 0xdef};
  for (const char* id : {"decode-a", "decode-b"}) {
    registry::ServiceRecord r{.id = id, .role = "decode", .grpc_address = "127.0.0.1:1", .model = "m",
                              .kv_scope = scope.Hex(), .load = {.free_kv_blocks = 100}};
    ASSERT_TRUE(registry->Put(r, absl::Hours(1)).ok());
  }
  std::vector<int32_t> prompt(1000);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(i * 7 % 5000);
  std::vector<std::string> keys;
  for (const engine::BlockKey& k : engine::PrefixBlockKeys(scope, "acme", prompt)) keys.push_back(k.Hex());
  ASSERT_EQ(keys.size(), 7u);
  ASSERT_TRUE(index->Add("decode-b", keys).ok());
  ClusterUpstream upstream(*registry, *MakePolicy("kv_aware"), {.model = "m", .refresh = absl::Hours(1)},
                           clock, index.get());
  ASSERT_TRUE(upstream.Refresh().ok());
  ASSERT_TRUE(upstream.wants_prefix());
  auto lookup = [&](const std::string& tenant) {
    absl::Notification done;
    PrefixHits out;
    upstream.LookupPrefix(UpstreamRequest{.request_id = "r", .tenant = tenant, .prompt = prompt},
                          [&](PrefixHits hits) {
                            out = std::move(hits);
                            done.Notify();
                          });
    done.WaitForNotification();
    return out;
  };
  PrefixHits hits = lookup("acme");
  EXPECT_EQ(hits.tokens["decode-b"], 7 * 128);
  auto route = upstream.Choose(1000, 10, {}, hits);
  ASSERT_TRUE(route.ok());
  EXPECT_EQ(route->decode.id, "decode-b");
  // Another tenant's same prompt finds nothing.
  EXPECT_TRUE(lookup("globex").tokens.empty());
  EXPECT_EQ(upstream.prefix_stats().lookups, 2);
}

}  // namespace
}  // namespace strata::router
