// The model's config.json (MODEL.md §1) as a typed, validated struct, and the presets
// `strata mkmodel` writes (MODEL.md §6). Everything that sizes a tensor or the KV cache reads it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata::engine {

struct RopeScaling {
  std::string type = "yarn";
  double factor = 16.0;
  int64_t original_max_position_embeddings = 65536;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

struct QuantizationConfig {
  std::string fmt = "e4m3";
  int64_t weight_block_rows = 128;
  int64_t weight_block_cols = 128;
  std::string scale_fmt = "ue8m0";
};

struct ModelConfig {
  std::string model_type = "deepseek_v4";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;         // d
  int64_t num_hidden_layers = 0;   // L
  int64_t num_attention_heads = 0; // H
  int64_t num_key_value_heads = 1;
  int64_t head_dim = 0;            // c
  int64_t qk_rope_head_dim = 0;    // r
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;            // G
  int64_t o_lora_rank = 0;
  int64_t sliding_window = 128;    // w
  std::vector<int64_t> compress_ratios;  // L entries, then one per MTP layer: 0, 4 (CSA) or 128 (HCA)
  double compress_rope_theta = 160000.0;
  double rope_theta = 10000.0;
  bool has_rope_scaling = true;
  RopeScaling rope_scaling;
  int64_t index_n_heads = 0;       // IH
  int64_t index_head_dim = 0;      // ic
  int64_t index_topk = 0;
  int64_t n_routed_experts = 0;    // E
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 0; // k
  int64_t moe_intermediate_size = 0;
  std::string scoring_func = "sqrtsoftplus";
  double routed_scaling_factor = 1.0;
  int64_t num_hash_layers = 0;
  double swiglu_limit = 10.0;
  int64_t hc_mult = 4;
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;
  int64_t num_nextn_predict_layers = 0;
  int64_t max_position_embeddings = 1048576;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  QuantizationConfig quantization;

  // Parses config.json text; `source` names the file in errors. Unknown fields are ignored
  // (real configs carry more than Strata needs); missing or mistyped ones are errors.
  static absl::StatusOr<ModelConfig> FromJson(absl::string_view json, absl::string_view source);
  static absl::StatusOr<ModelConfig> Load(const std::string& path);

  // Checks the relations between fields; the message names the field and what it must satisfy.
  absl::Status Validate() const;
  std::string ToJson() const;

  int64_t total_layers() const { return num_hidden_layers + num_nextn_predict_layers; }
  // Compression ratio of layer `layer` (MTP layers follow the main ones).
  int64_t ratio(int64_t layer) const { return compress_ratios[static_cast<size_t>(layer)]; }
  bool is_hash_layer(int64_t layer) const { return layer < num_hash_layers; }
  int64_t nope_dim() const { return head_dim - qk_rope_head_dim; }
};

// tiny | small | flash | pro. `layers` > 0 keeps only the first `layers` layers (and the MTP
// layers), for single-layer benchmarks of the large presets.
absl::StatusOr<ModelConfig> PresetConfig(absl::string_view name, int64_t layers = 0);

}  // namespace strata::engine
