// The expert pool against LocalExperts: the same model run with its routed experts on 1, 2 and 4
// in-process ranks (with waves, with round trips cut by max_rows, with replicas) gives the same
// logits bit for bit, prefill and decode, hash and score layers; a rank that dies or stops
// answering fails the step with its name within the timeout, and replicas carry on.
#include "expert_pool/remote_experts.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "common/file.h"
#include "engine/checkpoint.h"
#include "engine/kv/kv_cache.h"
#include "engine/model.h"
#include "engine/model_writer.h"
#include "expert_pool/experts_service.h"
#include "expert_pool/placement.h"
#include "grpcpp/grpcpp.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::expert_pool {
namespace {

namespace fs = std::filesystem;
using engine::ModelWeights;

// tiny (8 experts, top-2, one hash layer then score layers) with a small vocabulary.
engine::ModelConfig PoolConfig() {
  engine::ModelConfig c = *engine::PresetConfig("tiny");
  c.vocab_size = 512;
  return c;
}

// One rank: its own backend, the weights of its experts only, its transport.
struct TestRank {
  std::unique_ptr<engine::Backend> backend;
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<transport::Transport> transport;
  std::shared_ptr<ExpertRank> rank;  // reset: the rank died
};

// The logits of each step: a prompt prefilled in chunks, then greedy decode steps.
using Trace = std::vector<std::vector<float>>;

class RemoteExpertsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = ::testing::TempDir() + "strata_pool_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = new std::string(tmpl);
    fs::create_directories(*dir_ + "/tok");
    ASSERT_TRUE(WriteFileAtomically(*dir_ + "/tok/tokenizer.json", "{}").ok());
    ASSERT_TRUE(WriteFileAtomically(*dir_ + "/tok/tokenizer_config.json", "{}").ok());
    ASSERT_TRUE(engine::WriteRandomModel(PoolConfig(), {.out_dir = *dir_ + "/m", .seed = 5, .tokenizer_dir = *dir_ + "/tok",
                                                        .threads = 2, .progress = false})
                    .ok());
    auto ckpt = engine::Checkpoint::Load(*dir_ + "/m", {.threads = 2, .progress = false});
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = ckpt->release();
    backend_ = engine::MakeCpuBackend(2).release();
    full_ = ModelWeights::Create(*ckpt_, *backend_)->release();
    // The attention side's weights: everything but the routed experts.
    attention_ = ModelWeights::Create(*ckpt_, *backend_, {.routed = [](int64_t, int64_t) { return false; }})->release();
    engine::LocalExperts local(*full_, *backend_);
    want_ = new Trace(RunModel(*full_, local));
  }
  static void TearDownTestSuite() {
    delete want_;
    delete attention_;
    delete full_;
    delete backend_;
    delete ckpt_;
    fs::remove_all(*dir_);
    delete dir_;
  }

  static std::vector<int32_t> Prompt() {
    std::vector<int32_t> ids(300);
    uint64_t s = 17;
    for (auto& id : ids) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      id = static_cast<int32_t>((s >> 33) % 512);
    }
    return ids;
  }

  // Prefill in chunks of 100, then 6 greedy steps; `status` gets the first failure.
  static Trace RunModel(const ModelWeights& weights, engine::ExpertExecutor& experts, absl::Status* status = nullptr) {
    engine::KvLayout layout(weights.config());
    engine::KvPool pool(layout, 16);
    engine::Model model(weights, *backend_, experts, pool);
    engine::SequenceCache cache = model.NewSequence();
    const std::vector<int32_t> prompt = Prompt();
    Trace trace;
    auto step = [&](absl::Span<const int32_t> tokens) {
      std::vector<float> logits;
      absl::Status s = model.Step({engine::StepInput{&cache, tokens, true}}, &logits);
      if (!s.ok()) {
        if (status != nullptr && status->ok()) *status = s;
        return false;
      }
      trace.push_back(std::move(logits));
      return true;
    };
    bool ok = true;
    for (size_t at = 0; at < prompt.size() && ok; at += 100) {
      ok = step(absl::MakeConstSpan(prompt).subspan(at, std::min<size_t>(100, prompt.size() - at)));
    }
    for (int i = 0; i < 6 && ok; ++i) {
      const std::vector<float>& last = trace.back();
      const int32_t next = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
      ok = step({&next, 1});
    }
    model.Release(cache);
    return trace;
  }

  // Ranks for `placement` on `fabric`; rank r's transport goes through `wrap` when given.
  std::vector<TestRank> StartRanks(const Placement& placement, const std::shared_ptr<transport::InProcFabric>& fabric,
                                   int faulty_rank = -1, transport::FaultOptions faults = {}) {
    std::vector<TestRank> ranks;
    for (int32_t r = 0; r < placement.ranks(); ++r) {
      TestRank t;
      t.backend = engine::MakeCpuBackend(1);
      auto held = [&placement, r](int64_t l, int64_t e) {
        const auto& h = placement.Homes(l, e);
        return std::find(h.begin(), h.end(), r) != h.end();
      };
      auto w = ModelWeights::Create(*ckpt_, *t.backend, {.dense = false, .routed = held});
      EXPECT_TRUE(w.ok()) << w.status();
      t.weights = *std::move(w);
      t.transport = transport::MakeInProcTransport(fabric);
      if (r == faulty_rank) t.transport = transport::MakeFaultyTransport(std::move(t.transport), faults);
      std::vector<std::vector<int32_t>> experts;
      for (int64_t l = 0; l < placement.layers(); ++l) experts.push_back(placement.ExpertsOf(l, r));
      auto rank = ExpertRank::Create(*t.weights, *t.backend, *t.transport, experts);
      EXPECT_TRUE(rank.ok()) << rank.status();
      t.rank = *std::move(rank);
      ranks.push_back(std::move(t));
    }
    return ranks;
  }

  static std::vector<RankHandle> Handles(std::vector<TestRank>& ranks) {
    std::vector<RankHandle> handles;
    for (size_t r = 0; r < ranks.size(); ++r) {
      std::weak_ptr<ExpertRank> rank = ranks[r].rank;
      handles.push_back({.name = absl::StrCat("experts-", r),
                         .attach = [rank](const AttachRequest& q) { return rank.lock()->Attach(q); },
                         .detach = [rank](uint64_t c) {
                           if (auto alive = rank.lock()) alive->Detach(c);
                         }});
    }
    return handles;
  }

  static void ExpectSameTrace(const Trace& got, const std::string& what) {
    ASSERT_EQ(got.size(), want_->size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].size(), (*want_)[i].size());
      EXPECT_EQ(std::memcmp(got[i].data(), (*want_)[i].data(), got[i].size() * sizeof(float)), 0)
          << what << ": step " << i << " differs";
    }
  }

  static std::string* dir_;
  static engine::Checkpoint* ckpt_;
  static engine::Backend* backend_;
  static ModelWeights* full_;
  static ModelWeights* attention_;
  static Trace* want_;
};

std::string* RemoteExpertsTest::dir_ = nullptr;
engine::Checkpoint* RemoteExpertsTest::ckpt_ = nullptr;
engine::Backend* RemoteExpertsTest::backend_ = nullptr;
ModelWeights* RemoteExpertsTest::full_ = nullptr;
ModelWeights* RemoteExpertsTest::attention_ = nullptr;
Trace* RemoteExpertsTest::want_ = nullptr;

TEST_F(RemoteExpertsTest, OneTwoAndFourRanksGiveLocalExpertsLogitsBitForBit) {
  const engine::ModelConfig& c = full_->config();
  for (int64_t ranks : {1, 2, 4}) {
    for (int waves : {1, 2}) {
      const std::string what = absl::StrCat(ranks, " rank(s), ", waves, " wave(s)");
      auto placement = Placement::Even(c.num_hidden_layers, c.n_routed_experts, ranks);
      ASSERT_TRUE(placement.ok()) << placement.status();
      auto fabric = transport::MakeInProcFabric();
      std::vector<TestRank> pool = StartRanks(*placement, fabric);
      auto client_transport = transport::MakeInProcTransport(fabric);
      // max_rows 64: a 100-token chunk goes as two round trips.
      auto remote = RemoteExperts::Create(c, *client_transport, Handles(pool), {.waves = waves, .max_rows = 64});
      ASSERT_TRUE(remote.ok()) << remote.status();
      absl::Status status;
      ExpectSameTrace(RunModel(*attention_, **remote, &status), what);
      EXPECT_TRUE(status.ok()) << status;
      const RemoteExpertsStats s = (*remote)->stats();
      EXPECT_GT(s.runs, 0);
      EXPECT_GT(s.bytes_sent, 0);
      int64_t waves_run = 0;
      for (const TestRank& r : pool) waves_run += r.rank->stats().waves;
      EXPECT_GE(waves_run, s.runs) << what;
    }
  }
}

TEST_F(RemoteExpertsTest, ADeadRankFailsTheStepNamingItAndReplicasCarryOn) {
  const engine::ModelConfig& c = full_->config();
  const std::vector<std::vector<int64_t>> load(static_cast<size_t>(c.num_hidden_layers),
                                               std::vector<int64_t>(static_cast<size_t>(c.n_routed_experts), 0));
  auto placement = Placement::Balanced(c.n_routed_experts, 2, c.n_routed_experts, load);  // two homes each
  ASSERT_TRUE(placement.ok()) << placement.status();
  auto fabric = transport::MakeInProcFabric();
  std::vector<TestRank> pool = StartRanks(*placement, fabric);
  auto client_transport = transport::MakeInProcTransport(fabric);
  auto remote = RemoteExperts::Create(c, *client_transport, Handles(pool), {.timeout = absl::Seconds(2)});
  ASSERT_TRUE(remote.ok()) << remote.status();
  ExpectSameTrace(RunModel(*attention_, **remote), "both ranks");

  pool[1].rank.reset();  // experts-1 dies: its handler is gone, its regions unregistered
  absl::Status status;
  const auto start = std::chrono::steady_clock::now();
  RunModel(*attention_, **remote, &status);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("experts-1"));
  // From now on every pair goes to experts-0, which holds every expert.
  status = absl::OkStatus();
  ExpectSameTrace(RunModel(*attention_, **remote, &status), "experts-0 alone");
  EXPECT_TRUE(status.ok()) << status;
}

TEST_F(RemoteExpertsTest, ARankWhoseAnswersAreLostTimesOutAndAnExpertWithNoLiveHomeFailsAtOnce) {
  const engine::ModelConfig& c = full_->config();
  auto placement = Placement::Even(c.num_hidden_layers, c.n_routed_experts, 2);
  ASSERT_TRUE(placement.ok());
  auto fabric = transport::MakeInProcFabric();
  // experts-1's puts and messages vanish (a hung or partitioned rank).
  std::vector<TestRank> pool = StartRanks(*placement, fabric, 1, {.drop_probability = 1.0});
  auto client_transport = transport::MakeInProcTransport(fabric);
  auto remote = RemoteExperts::Create(c, *client_transport, Handles(pool), {.timeout = absl::Milliseconds(500)});
  ASSERT_TRUE(remote.ok()) << remote.status();
  absl::Status status;
  auto start = std::chrono::steady_clock::now();
  RunModel(*attention_, **remote, &status);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("experts-1 did not answer within 500ms"));
  // No replica: the next step fails at once, naming the expert and its rank.
  status = absl::OkStatus();
  start = std::chrono::steady_clock::now();
  RunModel(*attention_, **remote, &status);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(400));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("lives only on failed rank(s) experts-1"));
}

TEST_F(RemoteExpertsTest, DelayedTransfersChangeNothing) {
  const engine::ModelConfig& c = full_->config();
  auto placement = Placement::Even(c.num_hidden_layers, c.n_routed_experts, 2);
  ASSERT_TRUE(placement.ok());
  auto fabric = transport::MakeInProcFabric();
  std::vector<TestRank> pool = StartRanks(*placement, fabric, 0, {.delay = absl::Microseconds(300)});
  auto client_transport = transport::MakeFaultyTransport(transport::MakeInProcTransport(fabric),
                                                          {.delay = absl::Microseconds(200)});
  auto remote = RemoteExperts::Create(c, *client_transport, Handles(pool), {.waves = 2});
  ASSERT_TRUE(remote.ok()) << remote.status();
  absl::Status status;
  ExpectSameTrace(RunModel(*attention_, **remote, &status), "delayed");
  EXPECT_TRUE(status.ok()) << status;
}

// The control plane over real gRPC (strata.v1.Experts): the handle a worker uses in a cluster.
TEST_F(RemoteExpertsTest, AttachingOverGrpcGivesTheSameLogits) {
  const engine::ModelConfig& c = full_->config();
  auto placement = Placement::Even(c.num_hidden_layers, c.n_routed_experts, 2);
  ASSERT_TRUE(placement.ok());
  auto fabric = transport::MakeInProcFabric();
  std::vector<TestRank> pool = StartRanks(*placement, fabric);
  std::vector<std::unique_ptr<ExpertsService>> services;
  std::vector<std::unique_ptr<grpc::Server>> servers;
  std::vector<RankHandle> handles;
  for (size_t r = 0; r < pool.size(); ++r) {
    services.push_back(std::make_unique<ExpertsService>(*pool[r].rank));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(services.back().get());
    servers.push_back(builder.BuildAndStart());
    ASSERT_NE(port, 0);
    handles.push_back(GrpcRankHandle(absl::StrCat("experts-", r), absl::StrCat("127.0.0.1:", port)));
  }
  auto client_transport = transport::MakeInProcTransport(fabric);
  {
    auto remote = RemoteExperts::Create(c, *client_transport, handles);
    ASSERT_TRUE(remote.ok()) << remote.status();
    EXPECT_EQ(pool[0].rank->stats().clients, 1);
    absl::Status status;
    ExpectSameTrace(RunModel(*attention_, **remote, &status), "over gRPC");
    EXPECT_TRUE(status.ok()) << status;
  }
  EXPECT_EQ(pool[0].rank->stats().clients, 0) << "the worker detached as it went";
  // A rank that is not there: the error names it and its address.
  auto missing = RemoteExperts::Create(c, *client_transport, {GrpcRankHandle("experts-9", "127.0.0.1:1")});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), ::testing::HasSubstr("experts-9 at 127.0.0.1:1"));
  for (auto& s : servers) s->Shutdown();
}

}  // namespace
}  // namespace strata::expert_pool
