// One layer's attention (MODEL.md §4) as a sequence of backend ops: q/kv projections, the
// sliding window, the compressors (CSA ratio 4 with the lightning indexer's top-k, HCA ratio 128
// taking every entry), the sink softmax and the grouped output projection — reading and writing
// the compressed KV cache.
//
// Threading: Forward() runs on the step thread; the backend parallelises inside each op.
#pragma once

#include <cstdint>

#include "engine/backend.h"
#include "engine/kv/kv_layout.h"
#include "engine/model_weights.h"

namespace strata::engine {

// The step's activations one layer's attention works in: backend memory, owned by the Model,
// sized for the step's T rows (widths from the config).
struct AttentionScratch {
  float* qr = nullptr;          // [T, q_lora]
  float* q = nullptr;           // [T, H·c]
  float* kv = nullptr;          // [T, c]
  uint8_t* kv_bytes = nullptr;  // [T, main entry bytes]
  float* ca = nullptr;          // [T, 2c] main compressor a
  float* cz = nullptr;          // [T, 2c] main compressor z
  float* ia = nullptr;          // [T, 2·ic] indexer compressor a
  float* iz = nullptr;          // [T, 2·ic]
  float* qi = nullptr;          // [T, IH·ic] indexer queries
  float* wi = nullptr;          // [T, IH] indexer head weights
  int32_t* chosen = nullptr;    // [T, index_topk]
  int32_t* count = nullptr;     // [T]
  float* o = nullptr;           // [T, H·c]
  float* r = nullptr;           // [T, G·o_lora]
};

class AttentionLayer {
 public:
  // `rope` is the layer kind's frequency table in backend memory.
  AttentionLayer(const ModelConfig& config, const LayerWeights& weights, int64_t layer,
                 const KvLayout& kv_layout, const RopeTable& rope, Backend& backend);

  // h: [T, d] attention input (after attn_norm). y: [T, d] output (BF16 values).
  void Forward(const StepBatch& step, const float* h, const KvPoolView& pool,
               const AttentionScratch& s, float* y);

 private:
  const ModelConfig& c_;
  const LayerWeights& w_;
  Backend& backend_;
  const RopeTable rope_;
  const KvEntryFormat format_;
  CompressorParams compressor_, index_compressor_;
  IndexerParams indexer_;
  AttentionParams attention_;
};

}  // namespace strata::engine
