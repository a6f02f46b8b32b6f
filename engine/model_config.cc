#include "engine/model_config.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file.h"
#include "common/status.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"
#include "simdjson.h"

namespace strata::engine {
namespace {

// Reads typed fields out of one JSON object, naming the file and field in every error.
class FieldReader {
 public:
  FieldReader(simdjson::dom::object object, std::string prefix) : object_(object), prefix_(std::move(prefix)) {}

  absl::Status Int(const char* name, int64_t* out, bool required) {
    simdjson::dom::element e;
    if (object_[name].get(e)) return Missing(name, required);
    if (e.is_int64()) {
      *out = e.get_int64().value();
      return absl::OkStatus();
    }
    if (e.is_uint64()) return Bad(name, "is too large");
    double d;
    if (!e.get(d) && d == static_cast<double>(static_cast<int64_t>(d))) {  // 4096.0 is fine
      *out = static_cast<int64_t>(d);
      return absl::OkStatus();
    }
    return Bad(name, "must be an integer");
  }

  absl::Status Double(const char* name, double* out, bool required) {
    simdjson::dom::element e;
    if (object_[name].get(e)) return Missing(name, required);
    if (e.get(*out)) return Bad(name, "must be a number");
    return absl::OkStatus();
  }

  absl::Status String(const char* name, std::string* out, bool required) {
    simdjson::dom::element e;
    if (object_[name].get(e)) return Missing(name, required);
    std::string_view s;
    if (e.get(s)) return Bad(name, "must be a string");
    *out = std::string(s);
    return absl::OkStatus();
  }

  absl::Status IntArray(const char* name, std::vector<int64_t>* out, bool required) {
    simdjson::dom::element e;
    if (object_[name].get(e)) return Missing(name, required);
    simdjson::dom::array a;
    if (e.get(a)) return Bad(name, "must be an array of integers");
    out->clear();
    for (auto v : a) {
      int64_t x;
      if (v.get(x)) return Bad(name, "must be an array of integers");
      out->push_back(x);
    }
    return absl::OkStatus();
  }

  // nullopt-like: returns false when absent or null.
  bool Object(const char* name, simdjson::dom::object* out) {
    simdjson::dom::element e;
    if (object_[name].get(e) || e.is_null()) return false;
    return !e.get(*out);
  }
  bool Present(const char* name) {
    simdjson::dom::element e;
    return !object_[name].get(e) && !e.is_null();
  }

  absl::Status Bad(const char* name, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(prefix_, name, "' ", what));
  }

 private:
  absl::Status Missing(const char* name, bool required) const {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(prefix_, name, "' is missing"));
  }

  simdjson::dom::object object_;
  std::string prefix_;
};

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(absl::string_view json, absl::string_view source) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(json.data(), json.size());
  simdjson::dom::element root;
  if (auto err = parser.parse(padded).get(root); err) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", simdjson::error_message(err)));
  }
  simdjson::dom::object object;
  if (root.get(object)) return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));

  ModelConfig c;
  FieldReader f(object, absl::StrCat(source, ": field '"));
  // clang-format off
  for (auto [name, out, required] : std::initializer_list<std::tuple<const char*, int64_t*, bool>>{
           {"vocab_size", &c.vocab_size, true}, {"hidden_size", &c.hidden_size, true},
           {"num_hidden_layers", &c.num_hidden_layers, true}, {"num_attention_heads", &c.num_attention_heads, true},
           {"num_key_value_heads", &c.num_key_value_heads, false}, {"head_dim", &c.head_dim, true},
           {"qk_rope_head_dim", &c.qk_rope_head_dim, true}, {"q_lora_rank", &c.q_lora_rank, true},
           {"o_groups", &c.o_groups, true}, {"o_lora_rank", &c.o_lora_rank, true},
           {"sliding_window", &c.sliding_window, false}, {"index_n_heads", &c.index_n_heads, true},
           {"index_head_dim", &c.index_head_dim, true}, {"index_topk", &c.index_topk, true},
           {"n_routed_experts", &c.n_routed_experts, true}, {"n_shared_experts", &c.n_shared_experts, false},
           {"num_experts_per_tok", &c.num_experts_per_tok, true},
           {"moe_intermediate_size", &c.moe_intermediate_size, true},
           {"num_hash_layers", &c.num_hash_layers, false}, {"hc_mult", &c.hc_mult, false},
           {"hc_sinkhorn_iters", &c.hc_sinkhorn_iters, false},
           {"num_nextn_predict_layers", &c.num_nextn_predict_layers, false},
           {"max_position_embeddings", &c.max_position_embeddings, false},
           {"bos_token_id", &c.bos_token_id, false}, {"eos_token_id", &c.eos_token_id, false}}) {
    STRATA_RETURN_IF_ERROR(f.Int(name, out, required));
  }
  for (auto [name, out] : std::initializer_list<std::pair<const char*, double*>>{
           {"compress_rope_theta", &c.compress_rope_theta}, {"rope_theta", &c.rope_theta},
           {"routed_scaling_factor", &c.routed_scaling_factor}, {"swiglu_limit", &c.swiglu_limit},
           {"hc_eps", &c.hc_eps}, {"rms_norm_eps", &c.rms_norm_eps}}) {
    STRATA_RETURN_IF_ERROR(f.Double(name, out, false));
  }
  // clang-format on
  STRATA_RETURN_IF_ERROR(f.String("model_type", &c.model_type, false));
  STRATA_RETURN_IF_ERROR(f.String("scoring_func", &c.scoring_func, false));
  STRATA_RETURN_IF_ERROR(f.IntArray("compress_ratios", &c.compress_ratios, true));

  simdjson::dom::object sub;
  c.has_rope_scaling = f.Object("rope_scaling", &sub);
  if (c.has_rope_scaling) {
    FieldReader r(sub, absl::StrCat(source, ": field 'rope_scaling."));
    // HF configs name the type either "type" or "rope_type".
    if (r.Present("type")) {
      STRATA_RETURN_IF_ERROR(r.String("type", &c.rope_scaling.type, false));
    } else {
      STRATA_RETURN_IF_ERROR(r.String("rope_type", &c.rope_scaling.type, true));
    }
    STRATA_RETURN_IF_ERROR(r.Double("factor", &c.rope_scaling.factor, true));
    STRATA_RETURN_IF_ERROR(r.Int("original_max_position_embeddings",
                                 &c.rope_scaling.original_max_position_embeddings, true));
    STRATA_RETURN_IF_ERROR(r.Double("beta_fast", &c.rope_scaling.beta_fast, false));
    STRATA_RETURN_IF_ERROR(r.Double("beta_slow", &c.rope_scaling.beta_slow, false));
  }
  if (f.Object("quantization_config", &sub)) {
    FieldReader q(sub, absl::StrCat(source, ": field 'quantization_config."));
    STRATA_RETURN_IF_ERROR(q.String("fmt", &c.quantization.fmt, false));
    STRATA_RETURN_IF_ERROR(q.String("scale_fmt", &c.quantization.scale_fmt, false));
    std::vector<int64_t> block;
    STRATA_RETURN_IF_ERROR(q.IntArray("weight_block_size", &block, false));
    if (!block.empty()) {
      if (block.size() != 2) return q.Bad("weight_block_size", "must be [rows, cols]");
      c.quantization.weight_block_rows = block[0];
      c.quantization.weight_block_cols = block[1];
    }
  }
  STRATA_RETURN_IF_ERROR(Annotate(c.Validate(), source));
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::Load(const std::string& path) {
  STRATA_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return FromJson(text, path);
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return Invalid(absl::StrCat("'", name, "' must be positive, not ", v));
    return absl::OkStatus();
  };
  // clang-format off
  for (auto [name, v] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"vocab_size", vocab_size}, {"hidden_size", hidden_size}, {"num_hidden_layers", num_hidden_layers},
           {"num_attention_heads", num_attention_heads}, {"head_dim", head_dim},
           {"qk_rope_head_dim", qk_rope_head_dim}, {"q_lora_rank", q_lora_rank}, {"o_groups", o_groups},
           {"o_lora_rank", o_lora_rank}, {"sliding_window", sliding_window}, {"index_n_heads", index_n_heads},
           {"index_head_dim", index_head_dim}, {"index_topk", index_topk}, {"n_routed_experts", n_routed_experts},
           {"n_shared_experts", n_shared_experts}, {"num_experts_per_tok", num_experts_per_tok},
           {"moe_intermediate_size", moe_intermediate_size}, {"hc_mult", hc_mult},
           {"hc_sinkhorn_iters", hc_sinkhorn_iters}, {"max_position_embeddings", max_position_embeddings}}) {
    STRATA_RETURN_IF_ERROR(positive(name, v));
  }
  // clang-format on
  if (num_key_value_heads != 1) {
    return Invalid(absl::StrCat("'num_key_value_heads' must be 1 (one shared KV head), not ", num_key_value_heads));
  }
  if (num_nextn_predict_layers < 0) return Invalid("'num_nextn_predict_layers' must not be negative");
  if (static_cast<int64_t>(compress_ratios.size()) != total_layers()) {
    return Invalid(absl::StrCat("'compress_ratios' has ", compress_ratios.size(), " entries, want ", total_layers(),
                                " (num_hidden_layers ", num_hidden_layers, " + num_nextn_predict_layers ",
                                num_nextn_predict_layers, ")"));
  }
  for (size_t i = 0; i < compress_ratios.size(); ++i) {
    int64_t r = compress_ratios[i];
    if (r != 0 && r != 4 && r != 128) {
      return Invalid(absl::StrCat("'compress_ratios'[", i, "] is ", r, "; each must be 0 (window only), 4 (CSA) or 128 (HCA)"));
    }
  }
  if (qk_rope_head_dim % 2 != 0 || qk_rope_head_dim >= head_dim) {
    return Invalid(absl::StrCat("'qk_rope_head_dim' (", qk_rope_head_dim, ") must be even and below head_dim (",
                                head_dim, ")"));
  }
  if (nope_dim() % 64 != 0) {
    return Invalid(absl::StrCat("head_dim - qk_rope_head_dim = ", nope_dim(),
                                " (the non-RoPE width) must be a multiple of 64, the FP8 KV scale block"));
  }
  if ((num_attention_heads * head_dim) % o_groups != 0) {
    return Invalid(absl::StrCat("num_attention_heads × head_dim (", num_attention_heads * head_dim,
                                ") must divide into o_groups (", o_groups, ")"));
  }
  if ((index_head_dim & (index_head_dim - 1)) != 0 || index_head_dim % 32 != 0 ||
      index_head_dim < qk_rope_head_dim) {
    return Invalid(absl::StrCat("'index_head_dim' (", index_head_dim,
                                ") must be a power of two (Hadamard rotation), a multiple of 32 (FP4 blocks) and at "
                                "least qk_rope_head_dim"));
  }
  if (hidden_size % 32 != 0 || moe_intermediate_size % 32 != 0) {
    return Invalid(absl::StrCat("hidden_size (", hidden_size, ") and moe_intermediate_size (", moe_intermediate_size,
                                ") must be multiples of 32, the FP4 expert scale block"));
  }
  if (num_experts_per_tok > n_routed_experts) {
    return Invalid(absl::StrCat("'num_experts_per_tok' (", num_experts_per_tok, ") exceeds n_routed_experts (",
                                n_routed_experts, ")"));
  }
  if (num_hash_layers < 0 || num_hash_layers > num_hidden_layers) {
    return Invalid(absl::StrCat("'num_hash_layers' (", num_hash_layers, ") must be between 0 and num_hidden_layers"));
  }
  if (scoring_func != "sqrtsoftplus") {
    return Invalid(absl::StrCat("'scoring_func' is '", scoring_func, "'; Strata implements 'sqrtsoftplus'"));
  }
  if (has_rope_scaling) {
    if (rope_scaling.type != "yarn") {
      return Invalid(absl::StrCat("'rope_scaling.type' is '", rope_scaling.type, "'; Strata implements 'yarn'"));
    }
    if (rope_scaling.factor < 1.0 || rope_scaling.original_max_position_embeddings <= 0) {
      return Invalid("'rope_scaling' needs factor >= 1 and a positive original_max_position_embeddings");
    }
  }
  if (rope_theta <= 0 || compress_rope_theta <= 0) return Invalid("'rope_theta' and 'compress_rope_theta' must be positive");
  if (rms_norm_eps <= 0 || hc_eps < 0) return Invalid("'rms_norm_eps' must be positive and 'hc_eps' not negative");
  if (quantization.fmt != "e4m3" || quantization.scale_fmt != "ue8m0" || quantization.weight_block_rows != 128 ||
      quantization.weight_block_cols != 128) {
    return Invalid(absl::StrCat("'quantization_config' is fmt ", quantization.fmt, ", scale_fmt ",
                                quantization.scale_fmt, ", blocks [", quantization.weight_block_rows, ",",
                                quantization.weight_block_cols, "]; Strata implements e4m3 with ue8m0 scales in [128,128] blocks"));
  }
  for (auto [name, id] : {std::pair{"bos_token_id", bos_token_id}, std::pair{"eos_token_id", eos_token_id}}) {
    if (id < 0 || id >= vocab_size) return Invalid(absl::StrCat("'", name, "' (", id, ") is outside the vocabulary"));
  }
  return absl::OkStatus();
}

std::string ModelConfig::ToJson() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"DeepseekV4ForCausalLM"};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  j["q_lora_rank"] = q_lora_rank;
  j["o_groups"] = o_groups;
  j["o_lora_rank"] = o_lora_rank;
  j["sliding_window"] = sliding_window;
  j["compress_ratios"] = compress_ratios;
  j["compress_rope_theta"] = compress_rope_theta;
  j["rope_theta"] = rope_theta;
  if (has_rope_scaling) {
    j["rope_scaling"] = {{"type", rope_scaling.type},
                         {"factor", rope_scaling.factor},
                         {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
                         {"beta_fast", rope_scaling.beta_fast},
                         {"beta_slow", rope_scaling.beta_slow}};
  }
  j["index_n_heads"] = index_n_heads;
  j["index_head_dim"] = index_head_dim;
  j["index_topk"] = index_topk;
  j["n_routed_experts"] = n_routed_experts;
  j["n_shared_experts"] = n_shared_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["scoring_func"] = scoring_func;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["num_hash_layers"] = num_hash_layers;
  j["swiglu_limit"] = swiglu_limit;
  j["hc_mult"] = hc_mult;
  j["hc_sinkhorn_iters"] = hc_sinkhorn_iters;
  j["hc_eps"] = hc_eps;
  j["rms_norm_eps"] = rms_norm_eps;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  j["max_position_embeddings"] = max_position_embeddings;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["torch_dtype"] = "bfloat16";
  j["quantization_config"] = {{"quant_method", "fp8"},
                              {"fmt", quantization.fmt},
                              {"weight_block_size", {quantization.weight_block_rows, quantization.weight_block_cols}},
                              {"scale_fmt", quantization.scale_fmt}};
  return j.dump(2) + "\n";
}

absl::StatusOr<ModelConfig> PresetConfig(absl::string_view name, int64_t layers) {
  ModelConfig c;
  c.vocab_size = 129280;
  c.routed_scaling_factor = 1.5;
  c.num_nextn_predict_layers = 1;
  std::vector<int64_t> ratios;
  if (name == "tiny") {
    c.hidden_size = 256; c.num_hidden_layers = 4; c.num_attention_heads = 4; c.head_dim = 128;
    c.qk_rope_head_dim = 64; c.q_lora_rank = 128; c.o_groups = 2; c.o_lora_rank = 128;
    c.index_n_heads = 8; c.index_head_dim = 128; c.index_topk = 16;
    c.n_routed_experts = 8; c.num_experts_per_tok = 2; c.num_hash_layers = 1; c.moe_intermediate_size = 128;
    ratios = {0, 4, 128, 4};
  } else if (name == "small") {
    c.hidden_size = 1024; c.num_hidden_layers = 8; c.num_attention_heads = 8; c.head_dim = 256;
    c.qk_rope_head_dim = 64; c.q_lora_rank = 512; c.o_groups = 4; c.o_lora_rank = 256;
    c.index_n_heads = 8; c.index_head_dim = 128; c.index_topk = 64;
    c.n_routed_experts = 64; c.num_experts_per_tok = 6; c.num_hash_layers = 1; c.moe_intermediate_size = 512;
    ratios = {0, 4, 128, 4, 128, 4, 128, 4};
  } else if (name == "flash") {
    c.hidden_size = 4096; c.num_hidden_layers = 43; c.num_attention_heads = 64; c.head_dim = 512;
    c.qk_rope_head_dim = 64; c.q_lora_rank = 1024; c.o_groups = 8; c.o_lora_rank = 1024;
    c.index_n_heads = 64; c.index_head_dim = 128; c.index_topk = 512;
    c.n_routed_experts = 256; c.num_experts_per_tok = 6; c.num_hash_layers = 3; c.moe_intermediate_size = 2048;
    ratios = {0, 0};
    for (int i = 0; i < 20; ++i) ratios.insert(ratios.end(), {4, 128});
    ratios.push_back(4);
  } else if (name == "pro") {
    c.hidden_size = 7168; c.num_hidden_layers = 61; c.num_attention_heads = 128; c.head_dim = 512;
    c.qk_rope_head_dim = 64; c.q_lora_rank = 1536; c.o_groups = 16; c.o_lora_rank = 1024;
    c.index_n_heads = 64; c.index_head_dim = 128; c.index_topk = 1024;
    c.n_routed_experts = 384; c.num_experts_per_tok = 6; c.num_hash_layers = 3; c.moe_intermediate_size = 3072;
    c.routed_scaling_factor = 2.5;
    ratios = {128, 128};
    for (int i = 0; i < 29; ++i) ratios.insert(ratios.end(), {4, 128});
    ratios.push_back(4);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown preset '", name, "' (want tiny, small, flash or pro)"));
  }
  if (layers < 0 || layers > c.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--layers ", layers, " is outside 1..", c.num_hidden_layers, " for preset ", name));
  }
  if (layers > 0) {
    c.num_hidden_layers = layers;
    ratios.resize(static_cast<size_t>(layers));
    c.num_hash_layers = std::min(c.num_hash_layers, layers);
  }
  c.compress_ratios = ratios;
  c.compress_ratios.push_back(0);  // the MTP layer: sliding window only
  STRATA_RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace strata::engine
