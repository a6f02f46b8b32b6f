// The disaggregated path without RPC: a PrefillWorker pushing KV over a Transport into a decode
// Scheduler's blocks must give exactly the tokens the colocated Scheduler gives (greedy), and
// blocks must be freed on every path (finish, cancel, transfer failure, corrupt bytes).
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "decode/scheduler.h"
#include "engine/kv/block_key.h"
#include "kvstore/block_store.h"
#include "kvstore/store_source.h"
#include "gtest/gtest.h"
#include "prefill/prefill_worker.h"
#include "tests/unit/engine/micro_model.h"
#include "transport/transport.h"

namespace strata {
namespace {

using testing::Instance;
using testing::MicroModel;
constexpr int64_t kVocab = testing::kMicroVocab;

// Collects one request's events.
struct Collector {
  absl::Mutex mu;
  std::vector<int32_t> tokens;
  absl::Status status;
  decode::Finish finish = decode::Finish::kNone;
  int64_t cached_tokens = -1;
  absl::Notification done;
  decode::Callbacks Callbacks() {
    decode::Callbacks c;
    c.on_event = [this](decode::Event e) {
      {
        absl::MutexLock lock(&mu);
        tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
        if (!e.done) return;
        status = e.status;
        finish = e.finish;
        cached_tokens = e.cached_tokens;
      }
      done.Notify();  // last touch: the test may destroy the collector right after
    };
    return c;
  }
  bool Wait() { return done.WaitForNotificationWithTimeout(absl::Seconds(120)); }
};

class DisaggregationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { micro_ = new MicroModel(5); }
  static void TearDownTestSuite() {
    delete micro_;
    micro_ = nullptr;
  }

  void SetUp() override {
    fabric_ = transport::MakeInProcFabric();
    ASSERT_TRUE(micro_->ok());
    colocated_ = std::make_unique<Instance>(micro_->weights(), 96);
    decode_ = std::make_unique<Instance>(micro_->weights(), 96);
    prefill_ = std::make_unique<Instance>(micro_->weights(), 96);
    decode_transport_ = transport::MakeInProcTransport(fabric_);
    prefill_transport_ = transport::MakeInProcTransport(fabric_);
    // The colocated reference computes every prompt cold.
    decode::SchedulerOptions cold = Options();
    cold.prefix_cache = false;
    local_ = std::make_unique<decode::Scheduler>(colocated_->model, colocated_->pool, cold);
    auto pool_reg = decode_transport_->Register(decode_->pool.memory(), static_cast<size_t>(decode_->pool.memory_bytes()));
    ASSERT_TRUE(pool_reg.ok());
    pool_reg_ = std::move(*pool_reg);
    ResetRemote(Options());
  }

  // A new decode scheduler (its landing memory registered for Remote()).
  void ResetRemote(const decode::SchedulerOptions& options) {
    landing_reg_.reset();
    remote_ = std::make_unique<decode::Scheduler>(decode_->model, decode_->pool, options);
    auto landing_reg = decode_transport_->Register(remote_->landing_memory(), remote_->landing_bytes());
    ASSERT_TRUE(landing_reg.ok());
    landing_reg_ = std::move(*landing_reg);
  }

  void TearDown() override {
    worker_.reset();
    local_.reset();
    remote_.reset();
  }

  void StartPrefill(transport::Transport& t, int64_t chunk, engine::KvSource* source = nullptr) {
    auto w = prefill::PrefillWorker::Create(prefill_->model, prefill_->pool, t,
                                            {.chunk_tokens = chunk, .max_running = 4, .source = source});
    ASSERT_TRUE(w.ok()) << w.status();
    worker_ = std::move(*w);
  }

  decode::SchedulerOptions Options() const {
    return {.max_batch = 8, .max_queue = 16, .chunk_tokens = 100, .eos_id = -1, .num_tokens = kVocab};
  }

  static decode::Request MakeRequest(const std::string& id, int64_t prompt_len, uint64_t seed, int64_t max_tokens) {
    decode::Request r;
    r.id = id;
    uint64_t s = seed;
    for (int64_t i = 0; i < prompt_len; ++i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      r.prompt.push_back(static_cast<int32_t>((s >> 33) % kVocab));
    }
    r.max_tokens = max_tokens;
    return r;
  }

  // What DecodeService does without gRPC: on admission, hand the prefill worker a target in
  // the decode worker's registered memory; when the job ends, tell the scheduler.
  decode::Callbacks Remote(Collector& c, const decode::Request& r, std::function<void(prefill::Job&)> tweak = nullptr) {
    decode::Callbacks cb = c.Callbacks();
    std::vector<int32_t> tokens(r.prompt.begin(), r.prompt.end() - 1);
    cb.on_admitted = [this, id = r.id, tokens, tweak](const decode::Admission& a) {
      prefill::Job job;
      job.id = id;
      job.tokens = tokens;
      job.target.transport_address = decode_transport_->address();
      job.target.layout_fingerprint = decode_->layout.fingerprint();
      job.target.pool = pool_reg_->Describe();
      job.target.block_bytes = static_cast<uint64_t>(decode_->layout.block_bytes());
      job.target.blocks = a.blocks;
      transport::RemoteRegion landing = landing_reg_->Describe();
      job.target.state = {landing.address + static_cast<uint64_t>(a.state_offset),
                          static_cast<uint64_t>(decode_->layout.state_bytes()), landing.key};
      job.target.checkpoint = {landing.address + static_cast<uint64_t>(a.checkpoint_offset),
                               static_cast<uint64_t>(decode_->layout.state_bytes()), landing.key};
      job.cache_namespace = namespace_;
      job.done = [this, id](absl::StatusOr<prefill::PrefillResult> r) {
        prefills_.fetch_add(1);
        remote_->Landed(id, decode::Landing{.status = r.status(),
                                            .cached_tokens = r.ok() ? r->cached_tokens : 0,
                                            .checkpoint_tokens = r.ok() ? r->checkpoint_tokens : 0});
      };
      if (tweak) tweak(job);
      absl::Status s = worker_->Submit(std::move(job));
      if (!s.ok()) remote_->Landed(id, s);
    };
    return cb;
  }

  // Every block is free again but those the workers' prefix caches keep.
  void ExpectAllFree() {
    // Stats are published by the loop threads after each step; wait briefly for them to settle.
    auto prefill_held = [&] { return prefill_->pool.num_blocks() - (worker_ ? worker_->stats().prefix.blocks : 0); };
    auto decode_held = [&] { return decode_->pool.num_blocks() - remote_->stats().prefix.blocks; };
    for (int i = 0; i < 200; ++i) {
      if (decode_->pool.free_blocks() == decode_held() &&
          prefill_->pool.free_blocks() == prefill_held() && remote_->stats().running == 0) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_EQ(decode_->pool.free_blocks(), decode_held());
    EXPECT_EQ(prefill_->pool.free_blocks(), prefill_held());
    EXPECT_EQ(remote_->stats().running, 0);
  }

  static MicroModel* micro_;
  std::string namespace_ = "tenant-a";  // of the jobs Remote() submits
  std::atomic<int> prefills_{0};        // jobs the prefill worker finished
  std::shared_ptr<transport::InProcFabric> fabric_;
  std::unique_ptr<Instance> colocated_, decode_, prefill_;
  std::unique_ptr<transport::Transport> decode_transport_, prefill_transport_;
  std::unique_ptr<transport::MemoryRegistration> pool_reg_, landing_reg_;
  std::unique_ptr<decode::Scheduler> local_, remote_;
  std::unique_ptr<prefill::PrefillWorker> worker_;
};

MicroModel* DisaggregationTest::micro_ = nullptr;

// Greedy tokens are identical: chunking (prefill chunk 300 vs colocated 100, shared with other
// requests) and the hand-off do not change a single bit of the KV (engine chunking tests), so
// the logits and the argmax agree exactly — no tolerance.
TEST_F(DisaggregationTest, SameTokensAsColocated) {
  StartPrefill(*prefill_transport_, 300);
  const std::vector<int64_t> lengths = {2, 129, 1100, 257};
  std::vector<std::unique_ptr<Collector>> local(lengths.size()), remote(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    decode::Request r = MakeRequest("r" + std::to_string(i), lengths[i], 100 + i, 12);
    local[i] = std::make_unique<Collector>();
    remote[i] = std::make_unique<Collector>();
    ASSERT_TRUE(local_->Submit(r, local[i]->Callbacks()).ok());
    decode::Request rr = r;
    rr.remote_prefill_tokens = lengths[i] - 1;
    ASSERT_TRUE(remote_->Submit(rr, Remote(*remote[i], rr)).ok());
  }
  for (size_t i = 0; i < lengths.size(); ++i) {
    ASSERT_TRUE(local[i]->Wait());
    ASSERT_TRUE(remote[i]->Wait());
    ASSERT_TRUE(local[i]->status.ok()) << local[i]->status;
    ASSERT_TRUE(remote[i]->status.ok()) << remote[i]->status;
    EXPECT_EQ(local[i]->tokens.size(), 12u);
    EXPECT_EQ(local[i]->finish, decode::Finish::kLength);
    EXPECT_EQ(remote[i]->tokens, local[i]->tokens) << "prompt of " << lengths[i] << " tokens";
  }
  ExpectAllFree();
}

// More requests than the prefill worker's slots (4) and the decode batch (8): the rest wait and
// every one completes.
TEST_F(DisaggregationTest, MoreRequestsThanSlotsAllComplete) {
  StartPrefill(*prefill_transport_, 64);
  constexpr int kRequests = 14;
  std::vector<std::unique_ptr<Collector>> c(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    decode::Request r = MakeRequest("m" + std::to_string(i), 20 + i, 50 + i, 3);
    r.remote_prefill_tokens = 19 + i;
    c[static_cast<size_t>(i)] = std::make_unique<Collector>();
    ASSERT_TRUE(remote_->Submit(r, Remote(*c[static_cast<size_t>(i)], r)).ok());
  }
  for (auto& x : c) {
    ASSERT_TRUE(x->Wait());
    EXPECT_TRUE(x->status.ok()) << x->status;
    EXPECT_EQ(x->tokens.size(), 3u);
  }
  ExpectAllFree();
}

// Issue #11: one long prompt must not stall everyone. A short prompt that arrives while a long one
// is being prefilled is computed in the next step, beside the long one's chunk, not after it.
TEST_F(DisaggregationTest, AShortPromptIsNotStuckBehindALongOne) {
  StartPrefill(*prefill_transport_, 256);
  decode::Request long_r = MakeRequest("long", 4000, 11, 1);
  long_r.remote_prefill_tokens = 3999;
  Collector long_c;
  ASSERT_TRUE(remote_->Submit(long_r, Remote(long_c, long_r)).ok());
  while (worker_->stats().tokens_computed == 0) absl::SleepFor(absl::Milliseconds(5));
  decode::Request short_r = MakeRequest("short", 20, 12, 1);
  short_r.remote_prefill_tokens = 19;
  Collector short_c;
  ASSERT_TRUE(remote_->Submit(short_r, Remote(short_c, short_r)).ok());
  ASSERT_TRUE(short_c.Wait());
  EXPECT_TRUE(short_c.status.ok()) << short_c.status;
  EXPECT_FALSE(long_c.done.HasBeenNotified()) << "the short prompt waited for the long one";
  EXPECT_LT(worker_->stats().tokens_computed, 3999 + 19);
  ASSERT_TRUE(long_c.Wait());
  EXPECT_TRUE(long_c.status.ok()) << long_c.status;
  ExpectAllFree();
}

TEST_F(DisaggregationTest, TransferFailureEndsTheRequestAndFreesBlocks) {
  auto faulty = transport::MakeFaultyTransport(transport::MakeInProcTransport(fabric_), {.fail_after = 3});
  StartPrefill(*faulty, 64);
  decode::Request r = MakeRequest("f", 600, 7, 4);
  r.remote_prefill_tokens = 599;
  Collector c;
  ASSERT_TRUE(remote_->Submit(r, Remote(c, r)).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable) << c.status;
  EXPECT_TRUE(c.tokens.empty());
  worker_.reset();
  ExpectAllFree();
}

TEST_F(DisaggregationTest, CorruptLandedBytesAreRefused) {
  StartPrefill(*prefill_transport_, 512);
  decode::Request r = MakeRequest("c", 300, 9, 4);
  r.remote_prefill_tokens = 299;
  Collector c;
  // Flip a byte of the first landed block after the transfer, before the scheduler verifies it.
  decode::Callbacks cb = Remote(c, r, [this](prefill::Job& job) {
    auto done = job.done;
    const int32_t first = job.target.blocks[0];
    job.done = [this, done, first](absl::StatusOr<prefill::PrefillResult> result) {
      decode_->pool.block(first)[engine::kKvHeaderBytes + 5] ^= 0x40;
      done(std::move(result));
    };
  });
  ASSERT_TRUE(remote_->Submit(r, cb).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.status.code(), absl::StatusCode::kDataLoss) << c.status;
  EXPECT_NE(c.status.message().find("landed KV block 0"), absl::string_view::npos) << c.status;
  ExpectAllFree();
}

TEST_F(DisaggregationTest, CancelFreesBlocksOnBothSides) {
  StartPrefill(*prefill_transport_, 64);
  decode::Request r = MakeRequest("x", 1000, 3, 200);
  r.remote_prefill_tokens = 999;
  Collector c;
  ASSERT_TRUE(remote_->Submit(r, Remote(c, r)).ok());
  remote_->Cancel("x");
  worker_->Cancel("x");
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.status.code(), absl::StatusCode::kCancelled) << c.status;
  ExpectAllFree();

  // And while decoding.
  decode::Request l = MakeRequest("y", 50, 4, 100000 / 1000);
  Collector d;
  absl::Notification first;
  decode::Callbacks cb = d.Callbacks();
  auto inner = cb.on_event;
  cb.on_event = [&, inner](decode::Event e) {
    inner(e);
    if (!first.HasBeenNotified()) first.Notify();
  };
  ASSERT_TRUE(remote_->Submit(l, cb).ok());
  ASSERT_TRUE(first.WaitForNotificationWithTimeout(absl::Seconds(60)));
  remote_->Cancel("y");
  ASSERT_TRUE(d.Wait());
  EXPECT_TRUE(d.status.code() == absl::StatusCode::kCancelled || d.status.ok()) << d.status;
  ExpectAllFree();
}

// A transfer that could not be fenced (its prefill worker neither settled nor could be stopped by
// the transport): its blocks and slot stay out of use for the quarantine, then come back.
TEST_F(DisaggregationTest, UnfencedTransfersBlocksAreQuarantined) {
  decode::SchedulerOptions options = Options();
  options.quarantine = absl::Milliseconds(300);
  ResetRemote(options);
  decode::Request r = MakeRequest("q", 300, 3, 4);
  r.remote_prefill_tokens = 299;
  Collector c;
  decode::Callbacks cb = c.Callbacks();
  absl::Notification admitted;
  cb.on_admitted = [&](const decode::Admission&) { admitted.Notify(); };
  ASSERT_TRUE(remote_->Submit(r, cb).ok());
  ASSERT_TRUE(admitted.WaitForNotificationWithTimeout(absl::Seconds(30)));
  const int64_t held = decode_->pool.num_blocks() - decode_->pool.free_blocks();
  ASSERT_GT(held, 0);
  remote_->Landed("q", absl::UnavailableError("prefill worker vanished"), 0, /*fenced=*/false);
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable);
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(decode_->pool.num_blocks() - decode_->pool.free_blocks(), held) << "reused before the quarantine ended";
  for (int i = 0; i < 300 && decode_->pool.free_blocks() != decode_->pool.num_blocks(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(decode_->pool.free_blocks(), decode_->pool.num_blocks());
}

TEST_F(DisaggregationTest, AdmissionWaitsForBlocksAndTheQueueIsBounded) {
  // 96 blocks: a request needing 60 blocks runs; the next one waits until it finishes.
  decode::Request big = MakeRequest("a", 10, 1, 60 * 128 - 10);
  decode::Request second = MakeRequest("b", 10, 2, 60 * 128 - 10);
  Collector a, b;
  ASSERT_TRUE(remote_->Submit(big, a.Callbacks()).ok());
  ASSERT_TRUE(remote_->Submit(second, b.Callbacks()).ok());
  for (int i = 0; i < 200 && remote_->stats().queued != 1; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(remote_->stats().queued, 1);
  remote_->Cancel("a");
  ASSERT_TRUE(a.Wait());
  for (int i = 0; i < 500 && remote_->stats().queued != 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(remote_->stats().queued, 0);  // b admitted once a's blocks came back
  remote_->Cancel("b");
  ASSERT_TRUE(b.Wait());

  // Too big for the pool at all, and a full queue.
  decode::Request huge = MakeRequest("h", 10, 1, 200 * 128);
  Collector h;
  EXPECT_EQ(remote_->Submit(huge, h.Callbacks()).code(), absl::StatusCode::kInvalidArgument);
}

// ---- prefix reuse ------------------------------------------------------------------------------

// Runs `r` on the colocated, cold scheduler: the reference for every reused run.
std::vector<int32_t> ColdTokens(decode::Scheduler& local, decode::Request r) {
  Collector c;
  r.remote_prefill_tokens = 0;
  EXPECT_TRUE(local.Submit(r, c.Callbacks()).ok());
  EXPECT_TRUE(c.Wait());
  EXPECT_TRUE(c.status.ok()) << c.status;
  return c.tokens;
}

std::vector<int32_t> Join(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Questions about one document through the prefill worker (the decode worker sends every prompt
// there: local_prefill_limit 0): from the second on, the prefill worker resumes from its cache at
// the document's last full block, reports it as cached, and the tokens are the cold run's.
TEST_F(DisaggregationTest, QuestionsAboutOneDocumentReuseThePrefillWorkersCache) {
  decode::SchedulerOptions options = Options();
  options.local_prefill_limit = 0;
  ResetRemote(options);
  StartPrefill(*prefill_transport_, 256);
  const std::vector<int32_t> doc = MakeRequest("doc", 700, 7, 1).prompt;
  for (int q = 0; q < 4; ++q) {
    decode::Request r = MakeRequest("q" + std::to_string(q), 20 + 7 * q, 200 + q, 8);
    r.prompt = Join(doc, r.prompt);
    r.remote_prefill_tokens = static_cast<int64_t>(r.prompt.size()) - 1;
    Collector c;
    ASSERT_TRUE(remote_->Submit(r, Remote(c, r)).ok());
    ASSERT_TRUE(c.Wait());
    ASSERT_TRUE(c.status.ok()) << c.status;
    EXPECT_EQ(c.cached_tokens, q == 0 ? 0 : 640) << "question " << q;  // 5 of the document's blocks
    EXPECT_EQ(c.tokens, ColdTokens(*local_, r)) << "question " << q;
  }
  EXPECT_EQ(prefills_.load(), 4);
  EXPECT_EQ(worker_->stats().prefix.hits, 3);
  // Another tenant's same document: nothing of the first tenant's is reused.
  namespace_ = "tenant-b";
  decode::Request other = MakeRequest("other", 30, 300, 4);
  other.prompt = Join(doc, other.prompt);
  other.cache_namespace = "tenant-b";
  other.remote_prefill_tokens = static_cast<int64_t>(other.prompt.size()) - 1;
  Collector c;
  ASSERT_TRUE(remote_->Submit(other, Remote(c, other)).ok());
  ASSERT_TRUE(c.Wait());
  EXPECT_EQ(c.cached_tokens, 0);
  EXPECT_EQ(c.tokens, ColdTokens(*local_, other));
  ExpectAllFree();
}

// A conversation: turn 2's prompt is turn 1's prompt, its answer and a new message. The decode
// worker kept turn 1's blocks — the landed prompt's and those its own generation filled — and
// resumes from the checkpoint it took at the last block end it reached, without a prefill.
TEST_F(DisaggregationTest, TheNextTurnReusesThePromptAndTheAnswerOnTheDecodeWorker) {
  StartPrefill(*prefill_transport_, 256);
  decode::Request turn1 = MakeRequest("t1", 200, 9, 100);
  turn1.cache_namespace = namespace_;
  turn1.remote_prefill_tokens = 199;
  Collector c1;
  ASSERT_TRUE(remote_->Submit(turn1, Remote(c1, turn1)).ok());
  ASSERT_TRUE(c1.Wait());
  ASSERT_TRUE(c1.status.ok()) << c1.status;
  EXPECT_EQ(c1.cached_tokens, 0);
  EXPECT_EQ(c1.tokens, ColdTokens(*local_, turn1));

  decode::Request turn2 = MakeRequest("t2", 30, 10, 12);
  turn2.prompt = Join(Join(turn1.prompt, c1.tokens), turn2.prompt);  // 330 tokens
  turn2.cache_namespace = namespace_;
  turn2.remote_prefill_tokens = static_cast<int64_t>(turn2.prompt.size()) - 1;
  Collector c2;
  ASSERT_TRUE(remote_->Submit(turn2, Remote(c2, turn2)).ok());
  ASSERT_TRUE(c2.Wait());
  ASSERT_TRUE(c2.status.ok()) << c2.status;
  // Turn 1 fed 299 tokens: blocks 0 and 1 are full, the second one partly generated tokens.
  EXPECT_EQ(c2.cached_tokens, 256);
  EXPECT_EQ(c2.tokens, ColdTokens(*local_, turn2));
  EXPECT_EQ(prefills_.load(), 1) << "turn 2 went to the prefill worker";
  EXPECT_EQ(remote_->stats().local_resumes, 1);
  // The same conversation under another namespace is computed cold.
  decode::Request stranger = turn2;
  stranger.id = "t3";
  stranger.cache_namespace = "tenant-b";
  stranger.remote_prefill_tokens = 0;  // computed here: nothing of tenant-a's to start from
  Collector c3;
  ASSERT_TRUE(remote_->Submit(stranger, c3.Callbacks()).ok());
  ASSERT_TRUE(c3.Wait());
  EXPECT_EQ(c3.cached_tokens, 0);
  EXPECT_EQ(c3.tokens, c2.tokens);
  ExpectAllFree();
}

// The kvstore between prefill workers: the first computes a document and writes its blocks and
// checkpoints back; a second prefill worker, its own cache empty, fetches them and resumes at the
// document's last full block — same tokens as cold, cached_tokens says so.
TEST_F(DisaggregationTest, ASecondPrefillWorkerResumesFromTheKvstore) {
  decode::SchedulerOptions options = Options();
  options.local_prefill_limit = 0;  // every prompt through a prefill worker
  options.prefix_cache = false;     // and none kept on the decode side
  ResetRemote(options);
  auto store = kvstore::BlockStore::Open(prefill_->layout, {.ram_bytes = int64_t{64} << 20});
  ASSERT_TRUE(store.ok()) << store.status();
  auto source = std::make_unique<kvstore::StoreKvSource>(**store, prefill_->pool);
  StartPrefill(*prefill_transport_, 256, source.get());
  const std::vector<int32_t> doc = MakeRequest("doc", 700, 17, 1).prompt;
  auto ask = [&](const std::string& id, uint64_t seed) {
    decode::Request r = MakeRequest(id, 25, seed, 6);
    r.prompt = Join(doc, r.prompt);
    r.remote_prefill_tokens = static_cast<int64_t>(r.prompt.size()) - 1;
    Collector c;
    EXPECT_TRUE(remote_->Submit(r, Remote(c, r)).ok());
    EXPECT_TRUE(c.Wait());
    EXPECT_TRUE(c.status.ok()) << c.status;
    EXPECT_EQ(c.tokens, ColdTokens(*local_, r)) << id;
    return c.cached_tokens;
  };
  EXPECT_EQ(ask("first", 1), 0);
  // The write-back runs off the loop: wait until the store has the document.
  const std::vector<engine::BlockKey> keys = engine::PrefixBlockKeys(
      {0, prefill_->layout.fingerprint()}, namespace_, doc);
  for (int i = 0; i < 500 && (*store)->Find(keys).checkpoint_blocks < 5; ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ((*store)->Find(keys).checkpoint_blocks, 5);
  // A new prefill worker (another pool, nothing cached) for the next question.
  worker_.reset();
  source.reset();
  prefill_ = std::make_unique<Instance>(micro_->weights(), 96);
  source = std::make_unique<kvstore::StoreKvSource>(**store, prefill_->pool);
  StartPrefill(*prefill_transport_, 256, source.get());
  EXPECT_EQ(ask("second", 2), 640);
  EXPECT_EQ(worker_->stats().fetches, 1);
  EXPECT_EQ(worker_->stats().fetched_blocks, 5);
  EXPECT_GT((*store)->stats().hits_ram, 0);
  worker_.reset();
  source.reset();
}

}  // namespace
}  // namespace strata
