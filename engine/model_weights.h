// Typed access to a loaded checkpoint's tensors, organised per layer, in the forms the backend's
// ops consume: linears as WeightViews, small vectors (norm weights, biases, mHC parameters)
// converted to FP32, and the few tensors the math wants in another form (wo_a dequantized to
// BF16, F32 scales turned into UE8M0 bytes, expert-id tables as int32) materialised once. Every
// pointer is backend memory (Backend::MakeResident): for the CPU backend a copy on huge pages
// (or, with CpuBackendOptions::copy_weights off, the mmap'd checkpoint itself), for a GPU backend
// a copy in device memory.
//
// Immutable after construction; safe to share between threads. Borrows the Checkpoint and the
// Backend, which must outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/checkpoint.h"

namespace strata::engine {

struct HcWeights {
  const float* fn = nullptr;     // [rows, hc·d]
  const float* base = nullptr;   // [rows]
  const float* scale = nullptr;  // [3] (blocks) or [1] (head)
  int64_t rows = 0;
};

struct CompressorWeights {
  WeightView wkv, wgate;        // BF16 [width, d]
  const float* ape = nullptr;   // [m, width]
  const float* norm = nullptr;  // [out_dim]
  int64_t ratio = 0, width = 0;
};

struct LayerWeights {
  int64_t ratio = 0;
  bool hash_routed = false;
  const float* attn_norm = nullptr;  // [d]
  const float* ffn_norm = nullptr;   // [d]
  HcWeights hc_attn, hc_ffn;
  WeightView wq_a, wq_b, wkv, wo_b;
  WeightView wo_a;                   // BF16, dequantized from the checkpoint's FP8 (exact)
  const float* q_norm = nullptr;     // [q_lora]
  const float* kv_norm = nullptr;    // [c]
  const float* attn_sink = nullptr;  // [H]
  CompressorWeights compressor;      // ratio > 0
  // CSA indexer (ratio 4)
  WeightView index_wq_b, index_weights_proj;
  CompressorWeights index_compressor;
  // MoE
  WeightView gate;                   // BF16 [E, d]
  const float* gate_bias = nullptr;  // score layers: [E]
  const int32_t* tid2eid = nullptr;  // hash layers: [V, k]
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
};

// Which tensors ModelWeights::Create makes resident: the whole model (the default), an attention
// worker whose routed experts live in the expert pool (routed returns false: its layers'
// `experts` are empty views), or an expert rank (dense false: only the routed experts it holds).
struct WeightSelection {
  bool dense = true;  // everything but the routed experts
  // Routed expert e of layer l is loaded where this returns true (null: every one).
  std::function<bool(int64_t layer, int64_t expert)> routed;
};

class ModelWeights {
 public:
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Create(const Checkpoint& checkpoint,
                                                              Backend& backend,
                                                              const WeightSelection& select = {});

  const ModelConfig& config() const { return config_; }
  const LayerWeights& layer(int64_t i) const { return layers_[static_cast<size_t>(i)]; }
  const uint16_t* embed() const { return embed_; }         // BF16 [V, d]
  const WeightView& head() const { return head_; }         // BF16 [V, d]
  const float* final_norm() const { return final_norm_; }  // [d]
  const HcWeights& hc_head() const { return hc_head_; }

 private:
  ModelWeights() = default;

  ModelConfig config_;
  std::vector<LayerWeights> layers_;
  const uint16_t* embed_ = nullptr;
  WeightView head_;
  const float* final_norm_ = nullptr;
  HcWeights hc_head_;
  // Host storage for materialised tensors (converted vectors, dequantized wo_a, converted
  // scales): what MakeResident was given must outlive the weights.
  std::vector<std::unique_ptr<std::vector<uint8_t>>> owned_;
};

}  // namespace strata::engine
