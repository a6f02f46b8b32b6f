// The checkpoint layout of MODEL.md §3 and its loader. ExpectedTensors() is the single list of
// every tensor a config implies (name, dtype, shape) — the loader checks a checkpoint against it
// and `strata mkmodel` writes exactly it.
//
// Loading maps every shard (zero-copy), checks that every expected tensor is present with its
// dtype and shape and that nothing else is, checks values that must be valid (UE8M0 scales that
// are not NaN, hash-routing tables holding expert ids), and touches every page in parallel so the
// first forward pass does not stall on page faults, drawing progress on a terminal.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"

namespace strata::engine {

// What a tensor holds, which decides how it is generated and which value checks apply.
enum class TensorRole : uint8_t {
  kEmbedding,     // [V, d] BF16
  kNormWeight,    // RMSNorm weight, BF16
  kLinearBf16,    // BF16 [out, in]
  kLinearFp8,     // E4M3 [out, in], paired with a kFp8Scale
  kFp8Scale,      // UE8M0 [ceil(out/128), ceil(in/128)]
  kExpertFp4,     // packed E2M1 [out, in/2] stored as I8, paired with a kFp4Scale
  kFp4Scale,      // UE8M0 [out, in/32]
  kHcFn,          // mHC mixing projection, F32
  kHcBase,        // mHC bias, F32
  kHcScale,       // mHC scales, F32
  kAttnSink,      // per-head sink logit, F32
  kApe,           // compressor position bias, F32
  kGateBias,      // expert-selection bias, F32
  kHashTable,     // tid2eid [V, k], integer expert ids
};

struct TensorSpec {
  std::string name;
  TensorRole role;
  DType dtype;                     // what mkmodel writes
  std::vector<DType> also_accepted;  // other dtypes a real checkpoint may use
  std::vector<int64_t> shape;
};

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

struct LoadOptions {
  bool verify_values = true;  // scan scales and hash tables (reads every byte of those tensors)
  bool prefault = true;       // touch every page up front
  int threads = 0;            // 0: one per hardware thread
  bool progress = true;       // draw progress when stderr is a terminal
};

// A loaded, validated checkpoint. Immutable; safe to share between threads.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Load(const std::string& dir, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const TensorStore& store() const { return *store_; }
  const std::string& dir() const { return dir_; }
  // The tensor `name`; every expected tensor is present after Load (CHECK-fails otherwise).
  TensorView Get(const std::string& name) const;
  size_t num_tensors() const { return specs_.size(); }
  uint64_t total_bytes() const { return store_->total_bytes(); }
  // Names these weights (for prefix-cache keys, engine/kv/block_key.h): a hash of every tensor's
  // name, dtype, shape and first and last 4 KiB.
  uint64_t identity() const { return identity_; }

 private:
  Checkpoint() = default;
  uint64_t ComputeIdentity() const;

  std::string dir_;
  ModelConfig config_;
  std::vector<TensorSpec> specs_;
  std::unique_ptr<TensorStore> store_;
  uint64_t identity_ = 0;
};

}  // namespace strata::engine
