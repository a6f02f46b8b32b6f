// Resuming from the prefix cache is exact: a prompt whose start was computed by an earlier
// sequence (its blocks shared, its state taken at a checkpoint) gives bit for bit the logits, KV
// bytes and greedy tokens that computing it cold does — on the CPU backend the workers run.
#include <cstring>
#include <memory>
#include <vector>

#include "engine/kv/block_key.h"
#include "engine/kv/prefix_cache.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/micro_model.h"

namespace strata::engine {
namespace {

using strata::testing::Instance;
using strata::testing::MicroModel;

std::vector<int32_t> Ids(int64_t n, uint64_t seed) {
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    ids.push_back(static_cast<int32_t>((seed >> 33) % strata::testing::kMicroVocab));
  }
  return ids;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class PrefixResumeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { micro_ = new MicroModel(); }
  static void TearDownTestSuite() { delete micro_; }

  void SetUp() override {
    ASSERT_TRUE(micro_->ok());
    warm_ = std::make_unique<Instance>(micro_->weights(), 64);
    cache_ = std::make_unique<PrefixCache>(warm_->pool, PrefixCacheOptions{});
    scope_ = {0x77, warm_->layout.fingerprint()};
  }
  void TearDown() override {
    cache_.reset();
    warm_.reset();
  }

  struct Run {
    std::vector<float> logits;     // the prompt's last position
    std::vector<int32_t> greedy;   // 6 tokens generated after it
    std::vector<uint8_t> kv;       // every block's bytes, then the state, after the prompt
    int64_t resumed_at = 0;
  };

  // Computes `prompt` on `inst` — cold, or (with the cache) from the deepest cached checkpoint —
  // in steps cut at the plan's checkpoint positions; caches its blocks and checkpoints after.
  Run Compute(Instance& inst, const std::vector<int32_t>& prompt, PrefixCache* cache) {
    const CheckpointPlan plan{.every = 2};
    const int64_t n = static_cast<int64_t>(prompt.size());
    Run run;
    SequenceCache seq = inst.model.NewSequence();
    const std::vector<BlockKey> keys = PrefixBlockKeys(scope_, "tenant", prompt);
    std::vector<std::pair<int64_t, std::vector<uint8_t>>> checkpoints;
    if (cache != nullptr) {
      // The last token is always computed (its logits are what the next token comes from).
      PrefixHit hit = cache->Match(keys, (n - 1) / kBlockTokens);
      if (!hit.blocks.empty()) {
        auto resumed = inst.model.ResumeSequence(hit.blocks, hit.checkpoint);
        EXPECT_TRUE(resumed.ok()) << resumed.status();
        seq = std::move(*resumed);
        run.resumed_at = seq.position;
      }
    }
    while (seq.position < n) {
      const int64_t end = plan.ChunkEnd(seq.position, n);
      StepInput in{&seq,
                   absl::MakeConstSpan(prompt).subspan(static_cast<size_t>(seq.position),
                                                       static_cast<size_t>(end - seq.position)),
                   end == n};
      run.logits.clear();
      absl::Status s = inst.model.Step({in}, &run.logits);
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) return run;
      if (plan.Due(seq.position, n)) checkpoints.emplace_back(seq.position, inst.model.SnapshotState(seq));
    }
    for (int32_t b : seq.blocks) {
      run.kv.insert(run.kv.end(), inst.pool.block(b), inst.pool.block(b) + inst.layout.block_bytes());
    }
    run.kv.insert(run.kv.end(), seq.state.begin(), seq.state.end());
    if (cache != nullptr) {
      cache->Insert(keys, absl::MakeConstSpan(seq.blocks).subspan(0, keys.size()));
      for (auto& [position, state] : checkpoints) {
        cache->InsertCheckpoint(keys[static_cast<size_t>(position / kBlockTokens - 1)], std::move(state));
      }
    }
    // Greedy decoding from there.
    std::vector<float> logits = run.logits;
    for (int i = 0; i < 6; ++i) {
      int32_t best = 0;
      for (int32_t v = 1; v < strata::testing::kMicroVocab; ++v) {
        if (logits[static_cast<size_t>(v)] > logits[static_cast<size_t>(best)]) best = v;
      }
      run.greedy.push_back(best);
      logits.clear();
      StepInput in{&seq, absl::MakeConstSpan(&run.greedy.back(), 1), true};
      EXPECT_TRUE(inst.model.Step({in}, &logits).ok());
    }
    inst.model.Release(seq);
    return run;
  }

  Run Cold(const std::vector<int32_t>& prompt) {
    Instance cold(micro_->weights(), 64);
    return Compute(cold, prompt, nullptr);
  }

  static MicroModel* micro_;
  std::unique_ptr<Instance> warm_;
  std::unique_ptr<PrefixCache> cache_;
  KeyScope scope_;
};

MicroModel* PrefixResumeTest::micro_ = nullptr;

TEST_F(PrefixResumeTest, AResumedPromptEqualsItsColdRunBitForBit) {
  const std::vector<int32_t> doc = Ids(700, 1);
  // First question: cold, and cached (checkpoints at blocks 2 and 4, and 5: its last full one).
  const std::vector<int32_t> a = Concat(doc, Ids(40, 2));
  Run first = Compute(*warm_, a, cache_.get());
  EXPECT_EQ(first.resumed_at, 0);
  EXPECT_EQ(first.logits, Cold(a).logits);

  // Second question about the same document: resumes at block 5 (640 tokens).
  const std::vector<int32_t> b = Concat(doc, Ids(50, 3));
  Run second = Compute(*warm_, b, cache_.get());
  EXPECT_EQ(second.resumed_at, 640);
  Run cold_b = Cold(b);
  EXPECT_EQ(second.logits, cold_b.logits);
  EXPECT_EQ(second.greedy, cold_b.greedy);
  EXPECT_EQ(second.kv.size(), cold_b.kv.size());
  EXPECT_TRUE(second.kv == cold_b.kv) << "KV bytes differ after resuming";

  // A prompt that leaves the document inside block 4 resumes at the periodic checkpoint (512).
  const std::vector<int32_t> c = Concat(std::vector<int32_t>(doc.begin(), doc.begin() + 600), Ids(30, 4));
  Run third = Compute(*warm_, c, cache_.get());
  EXPECT_EQ(third.resumed_at, 512);
  Run cold_c = Cold(c);
  EXPECT_EQ(third.logits, cold_c.logits);
  EXPECT_EQ(third.greedy, cold_c.greedy);
  EXPECT_TRUE(third.kv == cold_c.kv);

  // The same prompt again: resumes at its own last full block, still exact.
  Run again = Compute(*warm_, b, cache_.get());
  EXPECT_EQ(again.resumed_at, 640);
  EXPECT_EQ(again.logits, cold_b.logits);
  EXPECT_EQ(again.greedy, cold_b.greedy);
}

TEST_F(PrefixResumeTest, AnotherNamespaceOrABadCheckpointComputesCold) {
  const std::vector<int32_t> doc = Concat(Ids(512, 5), Ids(10, 6));
  Compute(*warm_, doc, cache_.get());
  const std::vector<BlockKey> other = PrefixBlockKeys(scope_, "someone-else", doc);
  EXPECT_EQ(cache_->Match(other, 4).matched_blocks, 0);
  // A checkpoint whose position does not match its blocks is refused by the model.
  PrefixHit hit = cache_->Match(PrefixBlockKeys(scope_, "tenant", doc), 4);
  ASSERT_EQ(hit.blocks.size(), 4u);
  std::vector<int32_t> three(hit.blocks.begin(), hit.blocks.begin() + 3);
  warm_->pool.Free(hit.blocks[3]);
  const int64_t free_before = warm_->pool.free_blocks();
  auto resumed = warm_->model.ResumeSequence(three, hit.checkpoint);
  EXPECT_EQ(resumed.status().code(), absl::StatusCode::kDataLoss) << resumed.status();
  EXPECT_EQ(warm_->pool.free_blocks(), free_before);  // released: the cache still holds them
}

}  // namespace
}  // namespace strata::engine
