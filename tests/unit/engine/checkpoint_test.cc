#include "engine/checkpoint.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "common/file.h"
#include "engine/model_writer.h"
#include "engine/numerics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// The tiny preset with a small vocabulary and fewer experts: every tensor kind, a few MB.
ModelConfig MicroConfig() {
  ModelConfig c = *PresetConfig("tiny");
  c.vocab_size = 512;
  c.n_routed_experts = 4;
  return c;
}

std::string MakeTempDir(const std::string& tag) {
  std::string tmpl = ::testing::TempDir() + "strata_" + tag + "_XXXXXX";
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = MakeTempDir("ckpt");
    tok_ = root_ + "/tok";
    fs::create_directories(tok_);
    ASSERT_TRUE(WriteFileAtomically(tok_ + "/tokenizer.json", "{\"model\": {}}").ok());
    ASSERT_TRUE(WriteFileAtomically(tok_ + "/tokenizer_config.json", "{}").ok());
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string Write(const std::string& name, uint64_t seed, uint64_t shard_bytes = 1 << 20) {
    std::string dir = root_ + "/" + name;
    absl::Status s = WriteRandomModel(MicroConfig(), {.out_dir = dir, .seed = seed, .tokenizer_dir = tok_,
                                                      .shard_bytes = shard_bytes, .threads = 2, .progress = false});
    EXPECT_TRUE(s.ok()) << s;
    return dir;
  }

  // Rewrites the shard holding `victim` through `edit`, which may change the writer's contents.
  // `edit` gets the tensors of that shard (name -> (dtype, shape, bytes)) to modify in place.
  using Tensors = std::map<std::string, std::tuple<DType, std::vector<int64_t>, std::vector<uint8_t>>>;
  void EditShard(const std::string& dir, const std::string& victim, const std::function<void(Tensors&)>& edit,
                 bool fix_index = true) {
    auto store = TensorStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    TensorView view = (*store)->Find(victim);
    ASSERT_NE(view.info, nullptr) << victim;
    const std::string shard_path = *view.file;
    Tensors tensors;
    for (const auto& file : (*store)->files()) {
      if (file->path() != shard_path) continue;
      for (const TensorInfo& t : file->tensors()) {
        TensorView v = file->View(t);
        tensors[t.name] = {t.dtype, t.shape, std::vector<uint8_t>(v.data, v.data + t.nbytes)};
      }
    }
    store->reset();
    edit(tensors);
    SafetensorsWriter writer;
    for (auto& [name, t] : tensors) {
      ASSERT_TRUE(writer.Add(name, std::get<0>(t), std::get<1>(t), std::get<2>(t)).ok());
    }
    ASSERT_TRUE(writer.Write(shard_path).ok());
    if (fix_index) {
      // Rebuild the index from what the shards now hold.
      std::map<std::string, std::string> weight_map;
      for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().extension() != ".safetensors") continue;
        auto f = SafetensorsFile::Open(entry.path());
        ASSERT_TRUE(f.ok());
        for (const TensorInfo& t : (*f)->tensors()) weight_map[t.name] = entry.path().filename();
      }
      ASSERT_TRUE(WriteSafetensorsIndex(dir, 0, weight_map).ok());
    }
  }

  std::string root_, tok_;
};

TEST_F(CheckpointTest, WrittenModelLoadsWithEveryExpectedTensor) {
  std::string dir = Write("m", 7);
  auto ckpt = Checkpoint::Load(dir, {.threads = 2, .progress = false});
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<TensorSpec> specs = ExpectedTensors(MicroConfig());
  EXPECT_EQ((*ckpt)->num_tensors(), specs.size());
  EXPECT_GT((*ckpt)->store().files().size(), 1u) << "1 MiB shards: the model must be sharded";
  for (const TensorSpec& spec : specs) {
    TensorView v = (*ckpt)->Get(spec.name);
    EXPECT_EQ(v.info->dtype, spec.dtype) << spec.name;
    EXPECT_EQ(v.info->shape, spec.shape) << spec.name;
  }
  // Layer kinds follow compress_ratios [0,4,128,4] + MTP [0].
  EXPECT_NE((*ckpt)->store().Find("layers.1.attn.indexer.wq_b.weight").info, nullptr);
  EXPECT_EQ((*ckpt)->store().Find("layers.2.attn.indexer.wq_b.weight").info, nullptr);
  EXPECT_EQ((*ckpt)->store().Find("layers.2.attn.compressor.ape").info->shape, (std::vector<int64_t>{128, 128}));
  EXPECT_EQ((*ckpt)->store().Find("layers.1.attn.compressor.wkv.weight").info->shape,
            (std::vector<int64_t>{256, 256}));
  EXPECT_NE((*ckpt)->store().Find("layers.0.ffn.gate.tid2eid").info, nullptr);
  EXPECT_NE((*ckpt)->store().Find("layers.1.ffn.gate.bias").info, nullptr);
  EXPECT_NE((*ckpt)->store().Find("mtp.0.e_proj.weight").info, nullptr);
  EXPECT_TRUE(fs::exists(dir + "/tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
}

TEST_F(CheckpointTest, SameSeedGivesByteIdenticalFilesAndOtherSeedsDiffer) {
  std::string a = Write("a", 42), b = Write("b", 42), c = Write("c", 43);
  size_t compared = 0;
  for (const auto& entry : fs::directory_iterator(a)) {
    std::string name = entry.path().filename();
    auto fa = ReadFile(a + "/" + name), fb = ReadFile(b + "/" + name), fc = ReadFile(c + "/" + name);
    ASSERT_TRUE(fa.ok() && fb.ok() && fc.ok()) << name;
    EXPECT_TRUE(*fa == *fb) << name << " differs between two runs with the same seed";
    if (name.ends_with(".safetensors")) {
      EXPECT_FALSE(*fa == *fc) << name << " ignores the seed";
    }
    ++compared;
  }
  EXPECT_GE(compared, 6u);
}

// Dequantized weights: finite, centred, with the intended spread; scales valid UE8M0.
TEST_F(CheckpointTest, WeightsAreNumericallyHealthy) {
  std::string dir = Write("h", 3);
  auto ckpt = Checkpoint::Load(dir, {.threads = 2, .progress = false});
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  // FP8 block-scaled linear: wq_b [H·c, q_lora], expected std 1/sqrt(q_lora).
  {
    TensorView w = (*ckpt)->Get("layers.1.attn.wq_b.weight");
    TensorView s = (*ckpt)->Get("layers.1.attn.wq_b.scale");
    const int64_t rows = w.info->shape[0], cols = w.info->shape[1], scols = s.info->shape[1];
    double sum = 0, sq = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        float v = E4M3ToFloat(w.data[r * cols + c]) * Ue8m0ToFloat(s.data[(r / 128) * scols + c / 128]);
        ASSERT_TRUE(std::isfinite(v));
        sum += v;
        sq += v * v;
      }
    double n = static_cast<double>(rows * cols), mean = sum / n, std = std::sqrt(sq / n - mean * mean);
    EXPECT_NEAR(mean, 0.0, 0.01);
    EXPECT_NEAR(std, 1.0 / std::sqrt(static_cast<double>(cols)), 0.15 / std::sqrt(static_cast<double>(cols)));
  }
  // FP4 expert: w2 [d, inter/2], expected std 1/sqrt(inter).
  {
    TensorView w = (*ckpt)->Get("layers.1.ffn.experts.3.w2.weight");
    TensorView s = (*ckpt)->Get("layers.1.ffn.experts.3.w2.scale");
    const int64_t rows = w.info->shape[0], in = w.info->shape[1] * 2;
    double sq = 0;
    int zeros = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < in; ++i) {
        float v = PackedE2M1At(w.data + r * (in / 2), i) * Ue8m0ToFloat(s.data[r * (in / 32) + i / 32]);
        sq += v * v;
        zeros += v == 0.0f;
      }
    double std = std::sqrt(sq / static_cast<double>(rows * in));
    EXPECT_NEAR(std, 1.0 / std::sqrt(static_cast<double>(in)), 0.25 / std::sqrt(static_cast<double>(in)));
    EXPECT_LT(zeros, rows * in / 2) << "FP4 weights must not collapse to zero";
  }
  // Hash table rows: distinct expert ids.
  {
    TensorView t = (*ckpt)->Get("layers.0.ffn.gate.tid2eid");
    const int64_t* ids = t.as<int64_t>();
    for (int64_t r = 0; r < t.info->shape[0]; ++r) EXPECT_NE(ids[2 * r], ids[2 * r + 1]) << "token " << r;
  }
}

TEST_F(CheckpointTest, MissingTensorIsNamedWithItsExpectedShape) {
  std::string dir = Write("miss", 1);
  EditShard(dir, "layers.2.attn.wkv.weight", [](Tensors& t) { t.erase("layers.2.attn.wkv.weight"); });
  auto ckpt = Checkpoint::Load(dir, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("tensor layers.2.attn.wkv.weight is missing (want F8_E4M3 [128,256])"));
}

TEST_F(CheckpointTest, MisShapedAndMistypedTensorsAreNamed) {
  std::string dir = Write("shape", 1);
  EditShard(dir, "layers.3.attn.wkv.scale", [](Tensors& t) {
    t["layers.3.attn.wkv.scale"] = {DType::kF8_E8M0, {2, 3}, std::vector<uint8_t>(6, 127)};
  });
  auto ckpt = Checkpoint::Load(dir, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("tensor layers.3.attn.wkv.scale has shape [2,3], want [1,2]"));
  EXPECT_THAT(ckpt.status().message(), HasSubstr(".safetensors"));

  std::string dir2 = Write("dtype", 1);
  EditShard(dir2, "norm.weight", [](Tensors& t) {
    t["norm.weight"] = {DType::kI16, {256}, std::vector<uint8_t>(512, 0)};
  });
  ckpt = Checkpoint::Load(dir2, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("tensor norm.weight is I16, want BF16 or F32"));
}

TEST_F(CheckpointTest, ExtraTensorIsRefused) {
  std::string dir = Write("extra", 1);
  EditShard(dir, "norm.weight", [](Tensors& t) {
    t["layers.9.attn.wkv.weight"] = {DType::kBF16, {2}, std::vector<uint8_t>(4, 0)};
  });
  auto ckpt = Checkpoint::Load(dir, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("tensor layers.9.attn.wkv.weight"));
  EXPECT_THAT(ckpt.status().message(), HasSubstr("not part of this model's layout"));
}

TEST_F(CheckpointTest, NanScaleAndBadExpertIdAreRefused) {
  std::string dir = Write("nan", 1);
  EditShard(dir, "layers.1.ffn.experts.2.w1.scale",
            [](Tensors& t) { std::get<2>(t["layers.1.ffn.experts.2.w1.scale"])[5] = 0xFF; });
  auto ckpt = Checkpoint::Load(dir, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("layers.1.ffn.experts.2.w1.scale element 5"));
  EXPECT_THAT(ckpt.status().message(), HasSubstr("NaN"));

  std::string dir2 = Write("hash", 1);
  EditShard(dir2, "layers.0.ffn.gate.tid2eid", [](Tensors& t) {
    int64_t bad = 17;
    std::memcpy(std::get<2>(t["layers.0.ffn.gate.tid2eid"]).data() + 8 * 9, &bad, 8);
  });
  ckpt = Checkpoint::Load(dir2, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("layers.0.ffn.gate.tid2eid element 9 is expert 17"));
}

TEST_F(CheckpointTest, MissingShardAndConfigAreNamed) {
  std::string dir = Write("shard", 1);
  fs::remove(dir + "/model-00002-of-" + [&] {
    for (const auto& e : fs::directory_iterator(dir)) {
      std::string n = e.path().filename();
      if (n.starts_with("model-00001-of-")) return n.substr(15);
    }
    return std::string("?");
  }());
  auto ckpt = Checkpoint::Load(dir, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("model-00002-of-"));
  EXPECT_THAT(ckpt.status().message(), HasSubstr("missing"));

  fs::remove(dir + "/config.json");
  ckpt = Checkpoint::Load(dir, {.progress = false});
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(ckpt.status().message(), HasSubstr("config.json"));
}

}  // namespace
}  // namespace strata::engine
