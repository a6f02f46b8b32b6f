#include "engine/model_weights.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/numerics.h"

namespace strata::engine {
namespace {

// Reads checkpoint tensors into the forms the forward pass wants.
class Reader {
 public:
  Reader(const Checkpoint& ckpt, std::vector<std::unique_ptr<std::vector<uint8_t>>>* owned)
      : ckpt_(ckpt), owned_(owned) {}

  // Any float-ish vector (BF16 or F32) as FP32.
  std::vector<float> Floats(const std::string& name) const {
    TensorView v = ckpt_.Get(name);
    const int64_t n = NumElements(v.info->shape);
    std::vector<float> out(static_cast<size_t>(n));
    if (v.info->dtype == DType::kBF16) {
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, v.data + 2 * i, 2);
        out[static_cast<size_t>(i)] = Bf16ToFloat(b);
      }
    } else {
      std::memcpy(out.data(), v.data, static_cast<size_t>(n) * 4);
    }
    return out;
  }

  const float* F32(const std::string& name) const { return ckpt_.Get(name).as<float>(); }

  WeightView Bf16(const std::string& name) const {
    TensorView v = ckpt_.Get(name + ".weight");
    return WeightView{WeightFormat::kBf16, v.data, nullptr, v.info->shape[0], v.info->shape[1]};
  }

  // UE8M0 scale bytes: as stored, or converted from F32 powers of two.
  const uint8_t* Scales(const std::string& name) {
    TensorView s = ckpt_.Get(name + ".scale");
    if (s.info->dtype == DType::kF8_E8M0) return s.data;
    const int64_t n = NumElements(s.info->shape);
    auto bytes = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, s.data + 4 * i, 4);
      int e;
      std::frexp(f, &e);  // f = 0.5 · 2^e (validated as a power of two at load)
      (*bytes)[static_cast<size_t>(i)] = Ue8m0FromExponent(e - 1);
    }
    owned_->push_back(std::move(bytes));
    return owned_->back()->data();
  }

  WeightView Fp8(const std::string& name) {
    TensorView v = ckpt_.Get(name + ".weight");
    return WeightView{WeightFormat::kFp8Block, v.data, Scales(name), v.info->shape[0], v.info->shape[1]};
  }

  WeightView Fp4(const std::string& name) {
    TensorView v = ckpt_.Get(name + ".weight");
    return WeightView{WeightFormat::kFp4Block, v.data, Scales(name), v.info->shape[0], v.info->shape[1] * 2};
  }

  // An FP8 block-scaled matrix dequantized to BF16 (exact: E4M3 × 2^k fits BF16).
  WeightView Fp8AsBf16(const std::string& name) {
    WeightView w = Fp8(name);
    auto bytes = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(w.rows * w.cols * 2));
    uint16_t* out = reinterpret_cast<uint16_t*>(bytes->data());
    const uint8_t* q = static_cast<const uint8_t*>(w.data);
    const int64_t scols = (w.cols + 127) / 128;
    for (int64_t r = 0; r < w.rows; ++r) {
      for (int64_t c = 0; c < w.cols; ++c) {
        float v = E4M3ToFloat(q[r * w.cols + c]) * Ue8m0ToFloat(w.scale[(r / 128) * scols + c / 128]);
        out[r * w.cols + c] = FloatToBf16(v);
      }
    }
    owned_->push_back(std::move(bytes));
    return WeightView{WeightFormat::kBf16, owned_->back()->data(), nullptr, w.rows, w.cols};
  }

  HcWeights Hc(const std::string& prefix) const {
    HcWeights hc;
    TensorView fn = ckpt_.Get(prefix + "_fn");
    hc.fn = fn.as<float>();
    hc.rows = fn.info->shape[0];
    hc.base = Floats(prefix + "_base");
    hc.scale = Floats(prefix + "_scale");
    return hc;
  }

  CompressorWeights Compressor(const std::string& p, int64_t ratio) const {
    CompressorWeights c;
    c.wkv = Bf16(p + "wkv");
    c.wgate = Bf16(p + "wgate");
    c.ape = F32(p + "ape");
    c.norm = Floats(p + "norm.weight");
    c.ratio = ratio;
    c.width = c.wkv.rows;
    return c;
  }

  std::vector<int32_t> Ints(const std::string& name) const {
    TensorView v = ckpt_.Get(name);
    const int64_t n = NumElements(v.info->shape);
    const size_t w = DTypeSize(v.info->dtype);
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      int64_t x = 0;
      switch (v.info->dtype) {
        case DType::kI64: std::memcpy(&x, v.data + w * i, 8); break;
        case DType::kI32: { int32_t y; std::memcpy(&y, v.data + w * i, 4); x = y; break; }
        case DType::kI16: { int16_t y; std::memcpy(&y, v.data + w * i, 2); x = y; break; }
        case DType::kI8: x = static_cast<int8_t>(v.data[i]); break;
        default: x = v.data[i];
      }
      out[static_cast<size_t>(i)] = static_cast<int32_t>(x);
    }
    return out;
  }

 private:
  const Checkpoint& ckpt_;
  std::vector<std::unique_ptr<std::vector<uint8_t>>>* owned_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Create(const Checkpoint& ckpt) {
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  w->config_ = ckpt.config();
  const ModelConfig& c = w->config_;
  Reader r(ckpt, &w->owned_);
  w->embed_ = ckpt.Get("embed.weight").as<uint16_t>();
  w->head_ = r.Bf16("head");
  w->final_norm_ = r.Floats("norm.weight");
  w->hc_head_ = r.Hc("hc_head");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("layers.", i, ".");
    LayerWeights l;
    l.ratio = c.ratio(i);
    l.hash_routed = c.is_hash_layer(i);
    l.attn_norm = r.Floats(p + "attn_norm.weight");
    l.ffn_norm = r.Floats(p + "ffn_norm.weight");
    l.hc_attn = r.Hc(p + "hc_attn");
    l.hc_ffn = r.Hc(p + "hc_ffn");
    const std::string a = p + "attn.";
    l.wq_a = r.Fp8(a + "wq_a");
    l.q_norm = r.Floats(a + "q_norm.weight");
    l.wq_b = r.Fp8(a + "wq_b");
    l.wkv = r.Fp8(a + "wkv");
    l.kv_norm = r.Floats(a + "kv_norm.weight");
    l.attn_sink = r.Floats(a + "attn_sink");
    l.wo_a = r.Fp8AsBf16(a + "wo_a");
    l.wo_b = r.Fp8(a + "wo_b");
    if (l.ratio > 0) l.compressor = r.Compressor(a + "compressor.", l.ratio);
    if (l.ratio == 4) {
      l.index_wq_b = r.Fp8(a + "indexer.wq_b");
      l.index_weights_proj = r.Bf16(a + "indexer.weights_proj");
      l.index_compressor = r.Compressor(a + "indexer.compressor.", 4);
    }
    const std::string f = p + "ffn.";
    l.gate = r.Bf16(f + "gate");
    if (l.hash_routed) {
      l.tid2eid = r.Ints(f + "gate.tid2eid");
    } else {
      l.gate_bias = r.Floats(f + "gate.bias");
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      const std::string x = absl::StrCat(f, "experts.", e, ".");
      l.experts.push_back(ExpertWeights{r.Fp4(x + "w1"), r.Fp4(x + "w3"), r.Fp4(x + "w2")});
    }
    l.shared = ExpertWeights{r.Fp8(f + "shared_experts.w1"), r.Fp8(f + "shared_experts.w3"),
                             r.Fp8(f + "shared_experts.w2")};
    w->layers_.push_back(std::move(l));
  }
  return w;
}

}  // namespace strata::engine
