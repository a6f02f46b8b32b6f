// Everything a process needs to run the model, loaded once: the checkpoint (mapped), the weights
// view, the backend, the in-process experts and the CPU thread pool. `strata generate` and every
// serving role build their Model from one Runtime plus their own KvPool.
//
// Threading: built once; afterwards read-only, except that Model::Step (one thread) uses it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "engine/experts.h"
#include "engine/model_weights.h"

namespace strata::engine {

struct RuntimeOptions {
  int threads = 0;              // 0: one per hardware thread
  std::string backend = "cpu";
};

struct Runtime {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LocalExperts> experts;
  std::unique_ptr<ThreadPool> threads;

  const ModelConfig& config() const { return weights->config(); }
};

absl::StatusOr<std::unique_ptr<Runtime>> LoadRuntime(const std::string& model_dir, const RuntimeOptions& options);

}  // namespace strata::engine
