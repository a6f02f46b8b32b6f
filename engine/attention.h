// One layer's attention (MODEL.md §4): q/kv projections, the sliding window, the compressors
// (CSA ratio 4 with the lightning indexer's top-k, HCA ratio 128 taking every entry), the sink
// softmax and the grouped output projection — reading and writing the compressed KV cache.
//
// Threading: Forward() runs on the step thread and fans out per token over the ThreadPool.
#pragma once

#include <cstdint>
#include <vector>

#include "common/thread_pool.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/kv_codec.h"
#include "engine/model_ops.h"
#include "engine/model_weights.h"

namespace strata::engine {

// The tokens of one step: for each sequence, `n` new tokens starting at position `start`, held
// in rows [row, row + n) of the step's activations.
struct StepSequenceRef {
  SequenceCache* cache = nullptr;
  int64_t start = 0;
  int64_t n = 0;
  int64_t row = 0;
};

struct StepLayout {
  std::vector<StepSequenceRef> seqs;
  std::vector<int64_t> positions;  // [T]
  std::vector<int32_t> seq_of_row; // [T]
  int64_t rows() const { return static_cast<int64_t>(positions.size()); }
};

class AttentionLayer {
 public:
  AttentionLayer(const ModelConfig& config, const LayerWeights& weights, int64_t layer, const KvLayout& kv_layout,
                 const Rope& rope, Backend& backend, ThreadPool& threads);

  // h: [T, d] attention input (after attn_norm). y: [T, d] output (BF16 values).
  void Forward(const StepLayout& step, const float* h, KvPool& pool, float* y);

 private:
  struct Projections;
  // An HCA layer's entries of one sequence, decoded once per step (shared by its tokens).
  struct DecodedEntries {
    std::vector<float> main;  // [visible, c]
  };
  void DecodeEntries(const StepSequenceRef& s, const KvPool& pool, DecodedEntries& out);
  void Project(const StepLayout& step, const float* h, Projections& p);
  void RunCompressors(const StepLayout& step, Projections& p, KvPool& pool);
  void EmitEntry(const CompressorWeights& cw, const uint8_t* carry, int64_t carry_rows, int64_t group,
                 bool indexer, SequenceCache& cache, KvPool& pool);
  void AttendToken(const StepLayout& step, int64_t row, const Projections& p, const DecodedEntries& decoded,
                   const std::vector<int64_t>& chosen, const KvPool& pool, float* o);
  // The lightning indexer for every token of one sequence: scores of all visible entries, then
  // each token's top-k indices (ascending) into `chosen`.
  void SelectTopK(const StepSequenceRef& s, const Projections& p, const KvPool& pool,
                  std::vector<std::vector<int64_t>>& chosen);
  void WriteWindow(const StepLayout& step, const Projections& p);

  const ModelConfig& c_;
  const LayerWeights& w_;
  const LayerKvLayout& kv_;
  const Rope& rope_;
  Backend& backend_;
  ThreadPool& threads_;
  MainEntryCodec main_codec_;
  IndexerEntryCodec index_codec_;
};

}  // namespace strata::engine
