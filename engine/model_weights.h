// Typed access to a loaded checkpoint's tensors, organised per layer, in the forms the forward
// pass consumes: linears as WeightViews over the mmap'd checkpoint (zero-copy), small vectors
// (norm weights, biases, mHC parameters) converted to FP32, and the few tensors the math wants in
// another form (wo_a dequantized to BF16, F32 scales turned into UE8M0 bytes) materialised once.
//
// Immutable after construction; safe to share between threads. Borrows the Checkpoint, which
// must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/checkpoint.h"

namespace strata::engine {

struct HcWeights {
  const float* fn = nullptr;  // [rows, hc·d]
  std::vector<float> base;    // [rows]
  std::vector<float> scale;   // [3] (blocks) or [1] (head)
  int64_t rows = 0;
};

struct CompressorWeights {
  WeightView wkv, wgate;  // BF16 [width, d]
  const float* ape = nullptr;  // [m, width]
  std::vector<float> norm;     // [out_dim]
  int64_t ratio = 0, width = 0;
};

struct ExpertWeights {
  WeightView w1, w3, w2;
};

struct LayerWeights {
  int64_t ratio = 0;
  bool hash_routed = false;
  std::vector<float> attn_norm, ffn_norm;
  HcWeights hc_attn, hc_ffn;
  WeightView wq_a, wq_b, wkv, wo_b;
  WeightView wo_a;  // BF16, dequantized from the checkpoint's FP8 (exact)
  std::vector<float> q_norm, kv_norm;
  std::vector<float> attn_sink;  // [H]
  CompressorWeights compressor;  // ratio > 0
  // CSA indexer (ratio 4)
  WeightView index_wq_b, index_weights_proj;
  CompressorWeights index_compressor;
  // MoE
  WeightView gate;                 // BF16 [E, d]
  std::vector<float> gate_bias;    // score layers
  std::vector<int32_t> tid2eid;    // hash layers: [V, k]
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
};

class ModelWeights {
 public:
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Create(const Checkpoint& checkpoint);

  const ModelConfig& config() const { return config_; }
  const LayerWeights& layer(int64_t i) const { return layers_[static_cast<size_t>(i)]; }
  const uint16_t* embed() const { return embed_; }  // BF16 [V, d]
  const WeightView& head() const { return head_; }  // BF16 [V, d]
  const std::vector<float>& final_norm() const { return final_norm_; }
  const HcWeights& hc_head() const { return hc_head_; }

 private:
  ModelWeights() = default;

  ModelConfig config_;
  std::vector<LayerWeights> layers_;
  const uint16_t* embed_ = nullptr;
  WeightView head_;
  std::vector<float> final_norm_;
  HcWeights hc_head_;
  // Storage for materialised tensors (dequantized wo_a, converted scales).
  std::vector<std::unique_ptr<std::vector<uint8_t>>> owned_;
};

}  // namespace strata::engine
