// The forward pass: chunking invariance (whole prompt, odd chunk sizes, token by token give the
// same KV bytes and logits), batching invariance, healthy logits, error paths. Runs on the
// scalar ReferenceBackend, whose per-row results do not depend on batching, so equality is
// exact: every op of the model is per token or per sequence in position order, and the only
// cross-token sums (attention, compressor pooling, expert accumulation) run in an order fixed by
// positions and expert ids, never by how tokens were grouped into steps.
#include "engine/model.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/file.h"
#include "engine/model_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/reference_backend.h"

namespace strata::engine {
namespace {

namespace fs = std::filesystem;

// tiny with a small vocabulary and 4 experts: every layer kind (window, CSA, HCA), fast.
ModelConfig MicroConfig() {
  ModelConfig c = *PresetConfig("tiny");
  c.vocab_size = 512;
  c.n_routed_experts = 4;
  return c;
}

class ModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = ::testing::TempDir() + "strata_model_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = new std::string(tmpl);
    fs::create_directories(*dir_ + "/tok");
    ASSERT_TRUE(WriteFileAtomically(*dir_ + "/tok/tokenizer.json", "{}").ok());
    ASSERT_TRUE(WriteFileAtomically(*dir_ + "/tok/tokenizer_config.json", "{}").ok());
    ASSERT_TRUE(WriteRandomModel(MicroConfig(), {.out_dir = *dir_ + "/m", .seed = 11, .tokenizer_dir = *dir_ + "/tok",
                                                 .threads = 2, .progress = false})
                    .ok());
    auto ckpt = Checkpoint::Load(*dir_ + "/m", {.threads = 2, .progress = false});
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    ckpt_ = ckpt->release();
    weights_backend_ = new testing::ReferenceBackend();
    weights_ = ModelWeights::Create(*ckpt_, *weights_backend_)->release();
  }
  static void TearDownTestSuite() {
    delete weights_;
    delete weights_backend_;
    delete ckpt_;
    fs::remove_all(*dir_);
    delete dir_;
  }

  void SetUp() override {
    layout_ = std::make_unique<KvLayout>(weights_->config());
    pool_ = std::make_unique<KvPool>(*layout_, 64);
    experts_ = std::make_unique<LocalExperts>(*weights_, backend_);
    model_ = std::make_unique<Model>(*weights_, backend_, *experts_, *pool_);
  }

  static std::vector<int32_t> Prompt(int64_t n, uint64_t seed) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    uint64_t s = seed;
    for (auto& id : ids) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      id = static_cast<int32_t>((s >> 33) % 512);
    }
    return ids;
  }

  // Runs `prompt` in chunks of `chunk` tokens; returns the last position's logits.
  std::vector<float> Prefill(SequenceCache& cache, const std::vector<int32_t>& prompt, size_t chunk) {
    std::vector<float> logits;
    for (size_t at = 0; at < prompt.size(); at += chunk) {
      const size_t n = std::min(chunk, prompt.size() - at);
      StepInput in{&cache, absl::MakeConstSpan(prompt).subspan(at, n), at + n == prompt.size()};
      absl::Status s = model_->Step({in}, &logits);
      EXPECT_TRUE(s.ok()) << s;
    }
    return logits;
  }

  // The cache's bytes: its state slot and every block, headers included.
  std::vector<uint8_t> CacheBytes(const SequenceCache& cache) const {
    std::vector<uint8_t> bytes(cache.state);
    for (int32_t id : cache.blocks) {
      const uint8_t* b = pool_->block(id);
      bytes.insert(bytes.end(), b, b + layout_->block_bytes());
    }
    return bytes;
  }

  static std::string* dir_;
  static Checkpoint* ckpt_;
  static Backend* weights_backend_;  // reads host memory: its weights serve every CPU-side backend
  static ModelWeights* weights_;
  testing::ReferenceBackend backend_;
  std::unique_ptr<KvLayout> layout_;
  std::unique_ptr<KvPool> pool_;
  std::unique_ptr<LocalExperts> experts_;
  std::unique_ptr<Model> model_;
};

std::string* ModelTest::dir_ = nullptr;
Checkpoint* ModelTest::ckpt_ = nullptr;
Backend* ModelTest::weights_backend_ = nullptr;
ModelWeights* ModelTest::weights_ = nullptr;

TEST_F(ModelTest, LogitsAreFiniteAndNotDegenerate) {
  SequenceCache cache = model_->NewSequence();
  std::vector<float> logits = Prefill(cache, Prompt(300, 1), 300);
  ASSERT_EQ(logits.size(), 512u);
  double sum = 0, sq = 0;
  for (float v : logits) {
    ASSERT_TRUE(std::isfinite(v));
    sum += v;
    sq += v * v;
  }
  const double mean = sum / 512, std = std::sqrt(sq / 512 - mean * mean);
  EXPECT_GT(std, 0.05) << "logits collapsed";
  EXPECT_LT(std, 100) << "logits blew up";
  model_->Release(cache);
}

// ≥ 1000 tokens: the 128-token window slides, every CSA group (4) and HCA group (128) boundary
// is crossed, and the indexer picks top-16 among up to 275 entries.
TEST_F(ModelTest, ChunkingDoesNotChangeKvBytesOrLogits) {
  const std::vector<int32_t> prompt = Prompt(1100, 2);
  SequenceCache whole = model_->NewSequence();
  const std::vector<float> want_logits = Prefill(whole, prompt, prompt.size());
  const std::vector<uint8_t> want_bytes = CacheBytes(whole);
  for (size_t chunk : {7ul, 129ul, 300ul, 1099ul}) {  // token by token: the CPU-backend test below
    SequenceCache cache = model_->NewSequence();
    std::vector<float> logits = Prefill(cache, prompt, chunk);
    ASSERT_EQ(logits.size(), want_logits.size());
    EXPECT_EQ(std::memcmp(logits.data(), want_logits.data(), logits.size() * 4), 0) << "chunk " << chunk;
    std::vector<uint8_t> bytes = CacheBytes(cache);
    ASSERT_EQ(bytes.size(), want_bytes.size());
    size_t first_diff = 0;
    while (first_diff < bytes.size() && bytes[first_diff] == want_bytes[first_diff]) ++first_diff;
    EXPECT_EQ(first_diff, bytes.size()) << "chunk " << chunk << ": KV bytes differ at byte " << first_diff;
    model_->Release(cache);
  }
  model_->Release(whole);
}

// The same on the optimized CPU backend: its kernels give each row of a linear the same
// summation order whatever the number of rows, so chunking stays exact there too.
TEST_F(ModelTest, ChunkingIsExactOnTheCpuBackend) {
  std::unique_ptr<Backend> cpu = MakeCpuBackend(2);
  LocalExperts experts(*weights_, *cpu);
  Model model(*weights_, *cpu, experts, *pool_);
  const std::vector<int32_t> prompt = Prompt(1100, 6);
  auto run = [&](size_t chunk, std::vector<uint8_t>* bytes) {
    SequenceCache cache = model.NewSequence();
    std::vector<float> logits;
    for (size_t at = 0; at < prompt.size(); at += chunk) {
      const size_t n = std::min(chunk, prompt.size() - at);
      EXPECT_TRUE(model.Step({StepInput{&cache, absl::MakeConstSpan(prompt).subspan(at, n), at + n == prompt.size()}},
                             &logits)
                      .ok());
    }
    *bytes = CacheBytes(cache);
    model.Release(cache);
    return logits;
  };
  std::vector<uint8_t> want_bytes, bytes;
  const std::vector<float> want = run(prompt.size(), &want_bytes);
  for (size_t chunk : {1ul, 129ul}) {
    std::vector<float> logits = run(chunk, &bytes);
    EXPECT_EQ(std::memcmp(logits.data(), want.data(), want.size() * 4), 0) << "chunk " << chunk;
    EXPECT_TRUE(bytes == want_bytes) << "chunk " << chunk;
  }
}

TEST_F(ModelTest, BatchedSequencesMatchSeparateRuns) {
  const std::vector<int32_t> a = Prompt(200, 3), b = Prompt(37, 4);
  SequenceCache sa = model_->NewSequence(), sb = model_->NewSequence();
  std::vector<float> la = Prefill(sa, a, a.size()), lb = Prefill(sb, b, b.size());
  // Together: a prefill chunk of one sequence and decode-sized steps of another in one step.
  SequenceCache ta = model_->NewSequence(), tb = model_->NewSequence();
  Prefill(tb, std::vector<int32_t>(b.begin(), b.end() - 1), 64);
  std::vector<float> logits;
  ASSERT_TRUE(model_->Step({StepInput{&ta, a, true}, StepInput{&tb, absl::MakeConstSpan(b).subspan(b.size() - 1), true}},
                           &logits)
                  .ok());
  ASSERT_EQ(logits.size(), 2u * 512);
  EXPECT_EQ(std::memcmp(logits.data(), la.data(), 512 * 4), 0);
  EXPECT_EQ(std::memcmp(logits.data() + 512, lb.data(), 512 * 4), 0);
  EXPECT_EQ(CacheBytes(ta), CacheBytes(sa));
  EXPECT_EQ(CacheBytes(tb), CacheBytes(sb));
  for (auto* c : {&sa, &sb, &ta, &tb}) model_->Release(*c);
}

TEST_F(ModelTest, CacheRecordsVerifyAndCorruptionIsDetected) {
  SequenceCache cache = model_->NewSequence();
  Prefill(cache, Prompt(300, 5), 300);
  for (int32_t id : cache.blocks) {
    EXPECT_TRUE(VerifyKvRecord(pool_->block(id), layout_->block_bytes(), KvRecordKind::kBlock, layout_->fingerprint()).ok());
  }
  EXPECT_TRUE(VerifyKvRecord(cache.state.data(), layout_->state_bytes(), KvRecordKind::kState, layout_->fingerprint()).ok());
  pool_->block(cache.blocks[1])[kKvHeaderBytes + 100] ^= 0x10;
  absl::Status s = VerifyKvRecord(pool_->block(cache.blocks[1]), layout_->block_bytes(), KvRecordKind::kBlock,
                                  layout_->fingerprint());
  EXPECT_THAT(s.message(), ::testing::HasSubstr("checksum"));
  model_->Release(cache);
}

TEST_F(ModelTest, BadInputFailsWithoutTouchingTheCache) {
  SequenceCache cache = model_->NewSequence();
  std::vector<float> logits;
  const int32_t bad[] = {1, 2, 9999};
  absl::Status s = model_->Step({StepInput{&cache, bad, true}}, &logits);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("token id 9999"));
  EXPECT_EQ(cache.position, 0);
  EXPECT_TRUE(cache.blocks.empty());
  // More blocks than the pool has (64 blocks of 128 tokens).
  std::vector<int32_t> huge(65 * 128, 1);
  s = model_->Step({StepInput{&cache, huge, true}}, &logits);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_EQ(pool_->free_blocks(), 64);
}

}  // namespace
}  // namespace strata::engine
