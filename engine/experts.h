// engine::ExpertExecutor — "run the routed experts of layer L on these tokens". The attention
// side (engine/model.h) calls only this interface; LocalExperts runs them on this process's
// backend, and the expert pool implements it remotely, so a worker never knows where its experts
// live.
//
// Threading: Run() is called by one thread at a time (the step loop).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "engine/backend.h"
#include "engine/model_weights.h"

namespace strata::engine {

class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;

  // x: [n, d] FFN inputs (BF16 values); for each token its k expert ids and routing weights.
  // out: [n, d] = Σ over the token's experts, in increasing expert id, of bf16(expert(x)·w)
  // accumulated in FP32 (not rounded). The order makes results independent of how tokens are
  // batched. All pointers are memory of the caller's backend (Backend::RoutedExperts).
  virtual absl::Status Run(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids,
                           const float* weights, int64_t k, float* out) = 0;
};

// Runs the experts on this process's backend, straight from the checkpoint's FP4 weights.
class LocalExperts : public ExpertExecutor {
 public:
  LocalExperts(const ModelWeights& weights, Backend& backend)
      : weights_(weights), backend_(backend) {}

  absl::Status Run(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids,
                   const float* weights, int64_t k, float* out) override;

 private:
  const ModelWeights& weights_;
  Backend& backend_;
};

}  // namespace strata::engine
