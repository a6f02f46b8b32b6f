// The DeepSeek-V4 forward pass (MODEL.md §4) over a batch of sequences, each at its own position,
// mixing prefill chunks and single decode tokens — the step a continuous-batching scheduler runs.
// Weights come from a ModelWeights, every op runs on a Backend (activations live in backend
// memory, in a step-sized scratch the model keeps), routed experts go through an ExpertExecutor,
// and the compressed KV cache lives in a KvPool plus each sequence's state slot.
//
// Threading: one thread calls Step() at a time; the backend fans work out over its own threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/attention.h"
#include "engine/backend.h"
#include "engine/experts.h"
#include "engine/kv/kv_cache.h"
#include "engine/model_weights.h"

namespace strata::engine {

struct StepInput {
  SequenceCache* cache = nullptr;
  absl::Span<const int32_t> tokens;  // new tokens, at positions cache->position, ...
  bool want_logits = false;          // logits after the last new token
};

// Sees the residual streams X [rows, hc, d] entering each layer (and, with layer == L, after the
// last one), for the rows of the step: what `--dump-layers` writes. `streams` is backend memory:
// read it with Model::backend().ToHost().
using LayerObserver = std::function<void(int64_t layer, const float* streams, int64_t rows)>;

class Model {
 public:
  Model(const ModelWeights& weights, Backend& backend, ExpertExecutor& experts, KvPool& pool);
  ~Model();

  // A new, empty sequence cache (state slot zeroed, no blocks).
  SequenceCache NewSequence() const;
  // A sequence resuming a cached prefix: `blocks` (full and sealed; the caller's references pass
  // to the sequence) and `checkpoint`, the state record at blocks.size() · 128 tokens. DataLoss,
  // with the blocks released, if the checkpoint is not a valid state record of this layout at
  // that position.
  absl::StatusOr<SequenceCache> ResumeSequence(std::vector<int32_t> blocks,
                                               absl::Span<const uint8_t> checkpoint);
  // The sequence's state record as host bytes: a checkpoint when its position is a block end.
  std::vector<uint8_t> SnapshotState(SequenceCache& cache) const;
  // Drops the sequence's references to its blocks (each goes back to the pool when nobody else
  // holds it).
  void Release(SequenceCache& cache);

  // Runs the new tokens of every input through the model, extending each cache; appends one row
  // of vocab_size FP32 logits to `logits` per input with want_logits, in input order.
  // Fails without changing any cache if the pool lacks blocks, a token id is out of range or the
  // backend cannot allocate the step's scratch.
  absl::Status Step(absl::Span<const StepInput> inputs, std::vector<float>* logits,
                    const LayerObserver& observer = nullptr);

  const ModelConfig& config() const { return weights_.config(); }
  const KvLayout& kv_layout() const { return pool_.layout(); }
  Backend& backend() const { return backend_; }

 private:
  struct Scratch;  // the step's activations in backend memory

  absl::Status Reserve(int64_t rows, int64_t seqs, int64_t table_entries, int64_t logit_rows);
  absl::Status Ffn(int64_t layer, int64_t rows);
  void Logits(const std::vector<int32_t>& rows, std::vector<float>* logits);

  const ModelWeights& weights_;
  Backend& backend_;
  ExpertExecutor& experts_;
  KvPool& pool_;
  DeviceBuffer rope_freqs_;  // [window layers' r/2 | compressed layers' r/2]
  std::vector<std::unique_ptr<AttentionLayer>> attention_;
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace strata::engine
