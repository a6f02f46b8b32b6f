// A random tiny-preset checkpoint with a 512-token vocabulary and 4 experts, written to a
// temporary folder and loaded once per test suite: what the decode/prefill tests run their
// schedulers and workers on. CPU backends read the weights where they are, so one set serves
// every model instance of a test.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "common/file.h"
#include "engine/checkpoint.h"
#include "engine/experts.h"
#include "engine/kv/kv_cache.h"
#include "engine/model.h"
#include "engine/model_writer.h"
#include "engine/runtime.h"
#include "gtest/gtest.h"

namespace strata::testing {

constexpr int64_t kMicroVocab = 512;

class MicroModel {
 public:
  // Writes and loads the model; a failure is a test failure (check ok()).
  explicit MicroModel(uint64_t seed = 5) {
    namespace fs = std::filesystem;
    dir_ = ::testing::TempDir() + "strata_micro_XXXXXX";  // mkdtemp's template
    if (::mkdtemp(dir_.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed";
      return;
    }
    fs::create_directories(dir_ + "/tok");
    EXPECT_TRUE(WriteFileAtomically(dir_ + "/tok/tokenizer.json", "{}").ok());
    EXPECT_TRUE(WriteFileAtomically(dir_ + "/tok/tokenizer_config.json", "{}").ok());
    engine::ModelConfig c = *engine::PresetConfig("tiny");
    c.vocab_size = kMicroVocab;
    c.n_routed_experts = 4;
    absl::Status written = engine::WriteRandomModel(
        c, {.out_dir = dir_ + "/m", .seed = seed, .tokenizer_dir = dir_ + "/tok", .threads = 2, .progress = false});
    EXPECT_TRUE(written.ok()) << written;
    auto ckpt = engine::Checkpoint::Load(dir_ + "/m", {.threads = 2, .progress = false});
    if (!ckpt.ok()) {
      ADD_FAILURE() << ckpt.status();
      return;
    }
    ckpt_ = std::move(*ckpt);
    backend_ = engine::MakeCpuBackend(1);
    auto weights = engine::ModelWeights::Create(*ckpt_, *backend_);
    if (!weights.ok()) {
      ADD_FAILURE() << weights.status();
      return;
    }
    weights_ = std::move(*weights);
  }
  ~MicroModel() {
    weights_.reset();
    backend_.reset();
    ckpt_.reset();
    std::filesystem::remove_all(dir_);
  }
  MicroModel(const MicroModel&) = delete;
  MicroModel& operator=(const MicroModel&) = delete;

  bool ok() const { return weights_ != nullptr; }
  const engine::ModelWeights& weights() const { return *weights_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::unique_ptr<engine::Checkpoint> ckpt_;
  std::unique_ptr<engine::Backend> backend_;
  std::unique_ptr<engine::ModelWeights> weights_;
};

// One model instance: its own backend, experts and pool over shared weights.
struct Instance {
  Instance(const engine::ModelWeights& weights, int64_t blocks)
      : layout(weights.config()),
        pool(layout, blocks),
        backend(engine::MakeCpuBackend(1)),
        experts(weights, *backend),
        model(weights, *backend, experts, pool) {}
  engine::KvLayout layout;
  engine::KvPool pool;
  std::unique_ptr<engine::Backend> backend;
  engine::LocalExperts experts;
  engine::Model model;
};

}  // namespace strata::testing
