// `strata mkmodel`: writes a checkpoint in the official layout (config.json, sharded
// safetensors with model.safetensors.index.json, the tokenizer files) filled with seeded random
// weights. Values are drawn per tensor from a counter-based generator keyed by (seed, tensor
// name, chunk), so generation runs in parallel and the same seed gives byte-identical files.
//
// The weights are scaled so a forward pass stays healthy through every layer: linears keep
// activation variance (std 1/sqrt(fan_in)), norms are 1, mHC mixes start near identity and FP8 /
// FP4 values carry valid power-of-two UE8M0 block scales.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/model_config.h"

namespace strata::engine {

struct ModelWriterOptions {
  std::string out_dir;
  uint64_t seed = 0;
  std::string tokenizer_dir;        // holds tokenizer.json and tokenizer_config.json; copied as is
  uint64_t shard_bytes = 0;         // 0: by model size (64 MiB for tiny, 4 GiB for the largest)
  int threads = 0;                  // 0: one per hardware thread
  bool progress = true;
};

absl::Status WriteRandomModel(const ModelConfig& config, const ModelWriterOptions& options);

}  // namespace strata::engine
