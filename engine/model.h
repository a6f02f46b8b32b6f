// The DeepSeek-V4 forward pass (MODEL.md §4) over a batch of sequences, each at its own position,
// mixing prefill chunks and single decode tokens — the step a continuous-batching scheduler runs.
// Weights come from a ModelWeights, linears run on a Backend, routed experts through an
// ExpertExecutor, and the compressed KV cache lives in a KvPool plus each sequence's state slot.
//
// Threading: one thread calls Step() at a time; the model fans work out over its ThreadPool.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "engine/attention.h"
#include "engine/backend.h"
#include "engine/experts.h"
#include "engine/kv_cache.h"
#include "engine/model_ops.h"
#include "engine/model_weights.h"

namespace strata::engine {

struct StepInput {
  SequenceCache* cache = nullptr;
  absl::Span<const int32_t> tokens;  // new tokens, at positions cache->position, ...
  bool want_logits = false;          // logits after the last new token
};

// Sees the residual streams X [rows, hc, d] entering each layer (and, with layer == L, after the
// last one), for the rows of the step: what `--dump-layers` writes.
using LayerObserver = std::function<void(int64_t layer, const float* streams, int64_t rows)>;

class Model {
 public:
  Model(const ModelWeights& weights, Backend& backend, ExpertExecutor& experts, KvPool& pool, ThreadPool& threads);

  // A new, empty sequence cache (state slot zeroed, no blocks).
  SequenceCache NewSequence() const;
  // Returns the sequence's blocks to the pool.
  void Release(SequenceCache& cache);

  // Runs the new tokens of every input through the model, extending each cache; appends one row
  // of vocab_size FP32 logits to `logits` per input with want_logits, in input order.
  // Fails without changing any cache if the pool lacks blocks or a token id is out of range.
  absl::Status Step(absl::Span<const StepInput> inputs, std::vector<float>* logits,
                    const LayerObserver& observer = nullptr);

  const ModelConfig& config() const { return weights_.config(); }
  const KvLayout& kv_layout() const { return pool_.layout(); }

 private:
  // mHC around one sublayer: computes the mixes and the sublayer input, then the update.
  void HcPre(const HcWeights& hc, const float* streams, int64_t rows, std::vector<HcMix>& mixes, float* x_in);
  void HcPost(const std::vector<HcMix>& mixes, const float* y, int64_t rows, float* streams);
  absl::Status Ffn(int64_t layer, const float* x, int64_t rows, const std::vector<int32_t>& tokens, float* y);
  void Logits(const float* streams, const std::vector<int64_t>& rows, std::vector<float>* logits);

  const ModelWeights& weights_;
  Backend& backend_;
  ExpertExecutor& experts_;
  KvPool& pool_;
  ThreadPool& threads_;
  Rope rope_window_, rope_compressed_;
  std::vector<std::unique_ptr<AttentionLayer>> attention_;
};

}  // namespace strata::engine
