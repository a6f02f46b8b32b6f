#include "engine/model_weights.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/numerics.h"

namespace strata::engine {
namespace {

// Reads checkpoint tensors into the forms the ops want, each made resident on the backend. The
// first failure (a backend out of memory) is kept and reported by status(); after it the reader
// returns null pointers.
class Reader {
 public:
  Reader(const Checkpoint& ckpt, Backend& backend,
         std::vector<std::unique_ptr<std::vector<uint8_t>>>* owned)
      : ckpt_(ckpt), backend_(backend), owned_(owned) {}

  const absl::Status& status() const { return status_; }

  // Host bytes as backend memory.
  const void* Resident(const void* host, int64_t bytes, const std::string& name) {
    if (!status_.ok()) return nullptr;
    absl::StatusOr<const void*> p = backend_.MakeResident(host, bytes);
    if (!p.ok()) {
      status_ = Annotate(p.status(), absl::StrCat("tensor ", name));
      return nullptr;
    }
    return *p;
  }

  // Bytes this reader made, kept alive with the weights, as backend memory.
  const void* Own(std::unique_ptr<std::vector<uint8_t>> bytes, const std::string& name) {
    owned_->push_back(std::move(bytes));
    return Resident(owned_->back()->data(), static_cast<int64_t>(owned_->back()->size()), name);
  }

  // Any float-ish vector (BF16 or F32) as FP32.
  const float* Floats(const std::string& name) {
    TensorView v = ckpt_.Get(name);
    const int64_t n = NumElements(v.info->shape);
    auto out = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(n) * 4);
    float* f = reinterpret_cast<float*>(out->data());
    if (v.info->dtype == DType::kBF16) {
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, v.data + 2 * i, 2);
        f[i] = Bf16ToFloat(b);
      }
    } else {
      std::memcpy(f, v.data, static_cast<size_t>(n) * 4);
    }
    return static_cast<const float*>(Own(std::move(out), name));
  }

  const float* F32(const std::string& name) {
    TensorView v = ckpt_.Get(name);
    return static_cast<const float*>(Resident(v.data, NumElements(v.info->shape) * 4, name));
  }

  WeightView Bf16(const std::string& name) {
    TensorView v = ckpt_.Get(name + ".weight");
    const int64_t rows = v.info->shape[0], cols = v.info->shape[1];
    return WeightView{WeightFormat::kBf16, Resident(v.data, rows * cols * 2, name), nullptr, rows,
                      cols};
  }

  // UE8M0 scale bytes: as stored, or converted from F32 powers of two.
  const uint8_t* Scales(const std::string& name) {
    TensorView s = ckpt_.Get(name + ".scale");
    const int64_t n = NumElements(s.info->shape);
    if (s.info->dtype == DType::kF8_E8M0)
      return static_cast<const uint8_t*>(Resident(s.data, n, name + ".scale"));
    auto bytes = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, s.data + 4 * i, 4);
      int e;
      std::frexp(f, &e);  // f = 0.5 · 2^e (validated as a power of two at load)
      (*bytes)[static_cast<size_t>(i)] = Ue8m0FromExponent(e - 1);
    }
    return static_cast<const uint8_t*>(Own(std::move(bytes), name + ".scale"));
  }

  WeightView Fp8(const std::string& name) {
    TensorView v = ckpt_.Get(name + ".weight");
    const int64_t rows = v.info->shape[0], cols = v.info->shape[1];
    return WeightView{WeightFormat::kFp8Block, Resident(v.data, rows * cols, name), Scales(name),
                      rows, cols};
  }

  WeightView Fp4(const std::string& name) {
    TensorView v = ckpt_.Get(name + ".weight");
    const int64_t rows = v.info->shape[0], cols = v.info->shape[1] * 2;
    return WeightView{WeightFormat::kFp4Block, Resident(v.data, rows * cols / 2, name),
                      Scales(name), rows, cols};
  }

  // An FP8 block-scaled matrix dequantized to BF16 (exact: E4M3 × 2^k fits BF16), from the
  // checkpoint's host bytes.
  WeightView Fp8AsBf16(const std::string& name) {
    TensorView v = ckpt_.Get(name + ".weight");
    TensorView sv = ckpt_.Get(name + ".scale");
    const int64_t rows = v.info->shape[0], cols = v.info->shape[1];
    const int64_t scols = (cols + 127) / 128;
    auto scale = [&](int64_t i) -> float {
      if (sv.info->dtype == DType::kF8_E8M0) return Ue8m0ToFloat(sv.data[i]);
      float f;
      std::memcpy(&f, sv.data + 4 * i, 4);
      return f;
    };
    auto bytes = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(rows * cols * 2));
    uint16_t* out = reinterpret_cast<uint16_t*>(bytes->data());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        out[r * cols + c] =
            FloatToBf16(E4M3ToFloat(v.data[r * cols + c]) * scale((r / 128) * scols + c / 128));
      }
    }
    return WeightView{WeightFormat::kBf16, Own(std::move(bytes), name), nullptr, rows, cols};
  }

  HcWeights Hc(const std::string& prefix) {
    HcWeights hc;
    hc.fn = F32(prefix + "_fn");
    hc.rows = ckpt_.Get(prefix + "_fn").info->shape[0];
    hc.base = Floats(prefix + "_base");
    hc.scale = Floats(prefix + "_scale");
    return hc;
  }

  CompressorWeights Compressor(const std::string& p, int64_t ratio) {
    CompressorWeights c;
    c.wkv = Bf16(p + "wkv");
    c.wgate = Bf16(p + "wgate");
    c.ape = F32(p + "ape");
    c.norm = Floats(p + "norm.weight");
    c.ratio = ratio;
    c.width = c.wkv.rows;
    return c;
  }

  // An integer table (any integer dtype) as int32.
  const int32_t* Ints(const std::string& name) {
    TensorView v = ckpt_.Get(name);
    const int64_t n = NumElements(v.info->shape);
    const size_t w = DTypeSize(v.info->dtype);
    auto bytes = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(n) * 4);
    int32_t* out = reinterpret_cast<int32_t*>(bytes->data());
    for (int64_t i = 0; i < n; ++i) {
      int64_t x = 0;
      switch (v.info->dtype) {
        case DType::kI64:
          std::memcpy(&x, v.data + w * i, 8);
          break;
        case DType::kI32: {
          int32_t y;
          std::memcpy(&y, v.data + w * i, 4);
          x = y;
          break;
        }
        case DType::kI16: {
          int16_t y;
          std::memcpy(&y, v.data + w * i, 2);
          x = y;
          break;
        }
        case DType::kI8:
          x = static_cast<int8_t>(v.data[i]);
          break;
        default:
          x = v.data[i];
      }
      out[i] = static_cast<int32_t>(x);
    }
    return static_cast<const int32_t*>(Own(std::move(bytes), name));
  }

 private:
  const Checkpoint& ckpt_;
  Backend& backend_;
  std::vector<std::unique_ptr<std::vector<uint8_t>>>* owned_;
  absl::Status status_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Create(const Checkpoint& ckpt,
                                                                   Backend& backend,
                                                                   const WeightSelection& select) {
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  w->config_ = ckpt.config();
  const ModelConfig& c = w->config_;
  Reader r(ckpt, backend, &w->owned_);
  auto routed = [&](int64_t layer, int64_t e) { return !select.routed || select.routed(layer, e); };
  if (!select.dense) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      LayerWeights l;
      l.ratio = c.ratio(i);
      l.hash_routed = c.is_hash_layer(i);
      l.experts.resize(static_cast<size_t>(c.n_routed_experts));
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        if (!routed(i, e)) continue;
        const std::string x = absl::StrCat("layers.", i, ".ffn.experts.", e, ".");
        l.experts[static_cast<size_t>(e)] = ExpertWeights{r.Fp4(x + "w1"), r.Fp4(x + "w3"), r.Fp4(x + "w2")};
      }
      w->layers_.push_back(std::move(l));
    }
    STRATA_RETURN_IF_ERROR(r.status());
    return w;
  }
  {
    TensorView embed = ckpt.Get("embed.weight");
    w->embed_ = static_cast<const uint16_t*>(
        r.Resident(embed.data, c.vocab_size * c.hidden_size * 2, "embed.weight"));
  }
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
    l.experts.resize(static_cast<size_t>(c.n_routed_experts));
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      if (!routed(i, e)) continue;
      const std::string x = absl::StrCat(f, "experts.", e, ".");
      l.experts[static_cast<size_t>(e)] = ExpertWeights{r.Fp4(x + "w1"), r.Fp4(x + "w3"), r.Fp4(x + "w2")};
    }
    l.shared = ExpertWeights{r.Fp8(f + "shared_experts.w1"), r.Fp8(f + "shared_experts.w3"),
                             r.Fp8(f + "shared_experts.w2")};
    w->layers_.push_back(std::move(l));
  }
  STRATA_RETURN_IF_ERROR(r.status());
  return w;
}

}  // namespace strata::engine
