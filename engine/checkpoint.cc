#include "engine/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <unistd.h>

#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/progress.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "xxhash.h"

namespace strata::engine {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Collects the specs of one model; `p` is the tensor-name prefix of the block being added.
class SpecBuilder {
 public:
  explicit SpecBuilder(const ModelConfig& c) : c_(c) {}

  void Add(std::string name, TensorRole role, DType dtype, std::vector<int64_t> shape,
           std::vector<DType> also = {}) {
    specs_.push_back(TensorSpec{std::move(name), role, dtype, std::move(also), std::move(shape)});
  }
  void Norm(const std::string& name, int64_t n) {
    Add(name + ".weight", TensorRole::kNormWeight, DType::kBF16, {n}, {DType::kF32});
  }
  void Bf16Linear(const std::string& name, int64_t out, int64_t in) {
    Add(name + ".weight", TensorRole::kLinearBf16, DType::kBF16, {out, in});
  }
  void Fp8Linear(const std::string& name, int64_t out, int64_t in) {
    Add(name + ".weight", TensorRole::kLinearFp8, DType::kF8_E4M3, {out, in});
    Add(name + ".scale", TensorRole::kFp8Scale, DType::kF8_E8M0, {CeilDiv(out, 128), CeilDiv(in, 128)},
        {DType::kF32});
  }
  void Fp4Linear(const std::string& name, int64_t out, int64_t in) {
    Add(name + ".weight", TensorRole::kExpertFp4, DType::kI8, {out, in / 2}, {DType::kU8});
    Add(name + ".scale", TensorRole::kFp4Scale, DType::kF8_E8M0, {out, in / 32}, {DType::kF32});
  }
  void Hc(const std::string& p, const std::string& which, int64_t rows, int64_t scales) {
    const int64_t hc = c_.hc_mult, d = c_.hidden_size;
    Add(p + "hc_" + which + "_fn", TensorRole::kHcFn, DType::kF32, {rows, hc * d});
    Add(p + "hc_" + which + "_base", TensorRole::kHcBase, DType::kF32, {rows});
    Add(p + "hc_" + which + "_scale", TensorRole::kHcScale, DType::kF32, {scales});
  }

  // One transformer block (attention + MoE) at prefix `p` ("layers.3." or "mtp.0.").
  void Block(const std::string& p, int64_t layer) {
    const ModelConfig& c = c_;
    const int64_t d = c.hidden_size, hc = c.hc_mult, H = c.num_attention_heads, hd = c.head_dim;
    Norm(p + "attn_norm", d);
    Norm(p + "ffn_norm", d);
    Hc(p, "attn", (2 + hc) * hc, 3);
    Hc(p, "ffn", (2 + hc) * hc, 3);
    const std::string a = p + "attn.";
    Fp8Linear(a + "wq_a", c.q_lora_rank, d);
    Norm(a + "q_norm", c.q_lora_rank);
    Fp8Linear(a + "wq_b", H * hd, c.q_lora_rank);
    Fp8Linear(a + "wkv", hd, d);
    Norm(a + "kv_norm", hd);
    Add(a + "attn_sink", TensorRole::kAttnSink, DType::kF32, {H});
    Fp8Linear(a + "wo_a", c.o_groups * c.o_lora_rank, H * hd / c.o_groups);
    Fp8Linear(a + "wo_b", d, c.o_groups * c.o_lora_rank);
    const int64_t m = c.ratio(layer);
    if (m > 0) {
      const int64_t k = m == 4 ? 2 : 1;
      Compressor(a + "compressor.", m, k * hd, hd);
    }
    if (m == 4) {
      const std::string ix = a + "indexer.";
      Fp8Linear(ix + "wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank);
      Bf16Linear(ix + "weights_proj", c.index_n_heads, d);
      Compressor(ix + "compressor.", 4, 2 * c.index_head_dim, c.index_head_dim);
    }
    const std::string f = p + "ffn.";
    const int64_t E = c.n_routed_experts, inter = c.moe_intermediate_size;
    Bf16Linear(f + "gate", E, d);
    if (c.is_hash_layer(layer)) {
      Add(f + "gate.tid2eid", TensorRole::kHashTable, DType::kI64, {c.vocab_size, c.num_experts_per_tok},
          {DType::kI32, DType::kI16, DType::kU8, DType::kI8});
    } else {
      Add(f + "gate.bias", TensorRole::kGateBias, DType::kF32, {E});
    }
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = absl::StrCat(f, "experts.", e, ".");
      Fp4Linear(x + "w1", inter, d);
      Fp4Linear(x + "w3", inter, d);
      Fp4Linear(x + "w2", d, inter);
    }
    const int64_t shared = inter * c.n_shared_experts;
    Fp8Linear(f + "shared_experts.w1", shared, d);
    Fp8Linear(f + "shared_experts.w3", shared, d);
    Fp8Linear(f + "shared_experts.w2", d, shared);
  }

  void Compressor(const std::string& p, int64_t m, int64_t width, int64_t out_dim) {
    Bf16Linear(p + "wkv", width, c_.hidden_size);
    Bf16Linear(p + "wgate", width, c_.hidden_size);
    Add(p + "ape", TensorRole::kApe, DType::kF32, {m, width});
    Norm(p + "norm", out_dim);
  }

  void HcHead(const std::string& p) {
    const int64_t hc = c_.hc_mult;
    Add(p + "hc_head_fn", TensorRole::kHcFn, DType::kF32, {hc, hc * c_.hidden_size});
    Add(p + "hc_head_base", TensorRole::kHcBase, DType::kF32, {hc});
    Add(p + "hc_head_scale", TensorRole::kHcScale, DType::kF32, {1});
  }

  std::vector<TensorSpec> Take() { return std::move(specs_); }

 private:
  const ModelConfig& c_;
  std::vector<TensorSpec> specs_;
};

bool Accepts(const TensorSpec& spec, DType dtype) {
  return dtype == spec.dtype ||
         std::find(spec.also_accepted.begin(), spec.also_accepted.end(), dtype) != spec.also_accepted.end();
}

std::string AcceptedNames(const TensorSpec& spec) {
  std::vector<std::string> names = {std::string(DTypeName(spec.dtype))};
  for (DType d : spec.also_accepted) names.emplace_back(DTypeName(d));
  return absl::StrJoin(names, " or ");
}

int64_t ReadInteger(const uint8_t* p, DType dtype) {
  switch (dtype) {
    case DType::kI64: { int64_t v; std::memcpy(&v, p, 8); return v; }
    case DType::kI32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::kI16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case DType::kI8: return static_cast<int8_t>(*p);
    default: return *p;
  }
}

// Value checks for the tensors whose contents the model's correctness depends on structurally.
absl::Status CheckValues(const TensorSpec& spec, const TensorView& view, const ModelConfig& config) {
  const int64_t n = NumElements(view.info->shape);
  auto where = [&](int64_t i) {
    return absl::StrCat(*view.file, ": tensor ", spec.name, " element ", i);
  };
  if (spec.role == TensorRole::kFp8Scale || spec.role == TensorRole::kFp4Scale) {
    if (view.info->dtype == DType::kF8_E8M0) {
      const uint8_t* p = view.data;
      const uint8_t* bad = std::find(p, p + n, uint8_t{0xFF});
      if (bad != p + n) return absl::DataLossError(absl::StrCat(where(bad - p), " is 0xFF, a NaN UE8M0 scale"));
    } else {  // F32 scales must still be powers of two (UE8M0 values)
      for (int64_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, view.data + 4 * i, 4);
        int e;
        if (!std::isfinite(v) || v <= 0 || std::frexp(v, &e) != 0.5f) {
          return absl::DataLossError(absl::StrCat(where(i), " is ", v, ", not a power of two (UE8M0 scale)"));
        }
      }
    }
  } else if (spec.role == TensorRole::kHashTable) {
    const size_t width = DTypeSize(view.info->dtype);
    for (int64_t i = 0; i < n; ++i) {
      int64_t id = ReadInteger(view.data + width * i, view.info->dtype);
      if (id < 0 || id >= config.n_routed_experts) {
        return absl::DataLossError(absl::StrCat(where(i), " is expert ", id, ", outside 0..",
                                                config.n_routed_experts - 1));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c) {
  SpecBuilder b(c);
  const int64_t V = c.vocab_size, d = c.hidden_size;
  b.Add("embed.weight", TensorRole::kEmbedding, DType::kBF16, {V, d});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) b.Block(absl::StrCat("layers.", i, "."), i);
  b.Norm("norm", d);
  b.HcHead("");
  b.Add("head.weight", TensorRole::kEmbedding, DType::kBF16, {V, d});
  for (int64_t j = 0; j < c.num_nextn_predict_layers; ++j) {
    const std::string p = absl::StrCat("mtp.", j, ".");
    b.Block(p, c.num_hidden_layers + j);
    b.Fp8Linear(p + "e_proj", d, d);
    b.Fp8Linear(p + "h_proj", d, d);
    b.Norm(p + "enorm", d);
    b.Norm(p + "hnorm", d);
    b.Norm(p + "norm", d);
    b.HcHead(p);
  }
  return b.Take();
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Load(const std::string& dir, const LoadOptions& options) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  STRATA_ASSIGN_OR_RETURN(ckpt->config_, ModelConfig::Load(dir + "/config.json"));
  STRATA_ASSIGN_OR_RETURN(ckpt->store_, TensorStore::Open(dir));
  ckpt->specs_ = ExpectedTensors(ckpt->config_);

  // Structure: every expected tensor present with an accepted dtype and its shape; nothing else.
  std::vector<std::string> problems;
  absl::flat_hash_set<std::string> expected;
  for (const TensorSpec& spec : ckpt->specs_) {
    expected.insert(spec.name);
    TensorView view = ckpt->store_->Find(spec.name);
    if (view.info == nullptr) {
      problems.push_back(absl::StrCat("tensor ", spec.name, " is missing (want ", DTypeName(spec.dtype), " ",
                                      ShapeString(spec.shape), ")"));
      continue;
    }
    if (!Accepts(spec, view.info->dtype)) {
      problems.push_back(absl::StrCat(*view.file, ": tensor ", spec.name, " is ", DTypeName(view.info->dtype),
                                      ", want ", AcceptedNames(spec)));
    }
    if (view.info->shape != spec.shape) {
      problems.push_back(absl::StrCat(*view.file, ": tensor ", spec.name, " has shape ",
                                      ShapeString(view.info->shape), ", want ", ShapeString(spec.shape)));
    }
  }
  for (const std::string& name : ckpt->store_->Names()) {
    if (!expected.contains(name)) {
      problems.push_back(absl::StrCat("tensor ", name, " (in ", *ckpt->store_->Find(name).file,
                                      ") is not part of this model's layout"));
    }
  }
  if (!problems.empty()) {
    const size_t shown = std::min<size_t>(problems.size(), 10);
    std::string more = problems.size() > shown ? absl::StrCat("\n  … and ", problems.size() - shown, " more") : "";
    return absl::DataLossError(absl::StrCat("checkpoint ", dir, " does not match its config.json (",
                                            problems.size(), " problem", problems.size() == 1 ? "" : "s", "):\n  ",
                                            absl::StrJoin(problems.begin(), problems.begin() + shown, "\n  "), more));
  }

  if (options.verify_values || options.prefault) {
    // Work items: value checks per tensor that needs them, and page-touching in 64 MiB slices.
    struct Item {
      const TensorSpec* spec = nullptr;  // value check
      const MappedFile* file = nullptr;  // prefault slice
      size_t offset = 0, length = 0;
    };
    std::vector<Item> items;
    uint64_t total = 0;
    if (options.verify_values) {
      for (const TensorSpec& spec : ckpt->specs_) {
        if (spec.role == TensorRole::kFp8Scale || spec.role == TensorRole::kFp4Scale ||
            spec.role == TensorRole::kHashTable) {
          items.push_back(Item{.spec = &spec});
        }
      }
    }
    if (options.prefault) {
      constexpr size_t kSlice = 64 << 20;
      for (const auto& file : ckpt->store_->files()) {
        for (size_t off = 0; off < file->file_size(); off += kSlice) {
          size_t len = std::min(kSlice, file->file_size() - off);
          items.push_back(Item{.file = &file->mapped(), .offset = off, .length = len});
          total += len;
        }
      }
    }
    ThreadPool pool(static_cast<size_t>(std::max(options.threads, 0)));
    Progress progress(absl::StrCat("loading ", dir), total, options.progress && ::isatty(2) == 1);
    absl::Mutex mu;
    absl::Status first_error;
    pool.ParallelFor(items.size(), [&](size_t i) {
      const Item& item = items[i];
      if (item.spec != nullptr) {
        absl::Status s = CheckValues(*item.spec, ckpt->store_->Find(item.spec->name), ckpt->config_);
        if (!s.ok()) {
          absl::MutexLock lock(&mu);
          if (first_error.ok()) first_error = s;
        }
      } else {
        item.file->Prefault(item.offset, item.length);
        progress.Advance(item.length);
      }
    });
    STRATA_RETURN_IF_ERROR(first_error);
  }
  ckpt->identity_ = ckpt->ComputeIdentity();
  return ckpt;
}

uint64_t Checkpoint::ComputeIdentity() const {
  // Every tensor's name, dtype and shape, and its first and last 4 KiB: two checkpoints that
  // differ anywhere but deep inside some tensor differ here (random weights of another seed, a
  // fine-tune, another quantization), at the cost of reading a few pages per tensor.
  constexpr uint64_t kSample = 4096;
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const TensorSpec& spec : specs_) {
    const TensorView view = store_->Find(spec.name);
    XXH3_64bits_update(state, spec.name.data(), spec.name.size() + 1);
    const uint64_t dtype = static_cast<uint64_t>(view.info->dtype);
    XXH3_64bits_update(state, &dtype, sizeof(dtype));
    XXH3_64bits_update(state, view.info->shape.data(), view.info->shape.size() * sizeof(int64_t));
    const uint64_t n = view.info->nbytes;
    XXH3_64bits_update(state, view.data, std::min(n, kSample));
    if (n > kSample) XXH3_64bits_update(state, view.data + n - std::min(n - kSample, kSample), std::min(n - kSample, kSample));
  }
  const uint64_t id = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return id;
}

TensorView Checkpoint::Get(const std::string& name) const {
  TensorView view = store_->Find(name);
  if (view.info == nullptr) {
    std::fprintf(stderr, "Checkpoint::Get: tensor %s is not part of the loaded layout\n", name.c_str());
    std::abort();
  }
  return view;
}

}  // namespace strata::engine
