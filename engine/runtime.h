// Everything a process needs to run the model, loaded once: the checkpoint (mapped), the backend,
// the weights made resident on it and the in-process experts. `strata generate` and every
// serving role build their Model from one Runtime plus their own KvPool.
//
// Threading: built once; afterwards read-only, except that Model::Step (one thread) uses it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
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
  // Declaration order is destruction order reversed: the weights live in the backend's memory.
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<LocalExperts> experts;

  const ModelConfig& config() const { return weights->config(); }
};

absl::StatusOr<std::unique_ptr<Runtime>> LoadRuntime(const std::string& model_dir, const RuntimeOptions& options);

}  // namespace strata::engine
