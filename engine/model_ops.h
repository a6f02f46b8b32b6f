// Host-side set-up the forward pass needs before any op runs: the RoPE frequency tables of
// MODEL.md §4/§5 (the ops themselves live behind engine::Backend).
#pragma once

#include <vector>

#include "engine/model_config.h"

namespace strata::engine {

// The rotation frequencies of one layer kind, r/2 of them: f_j = fp32(1 / fp32(θ^(2j/r))) with
// the power correctly rounded (computed in FP64), and YaRN applied for compressed layers
// (ratio > 0, θ = compress_rope_theta); window-only layers use rope_theta without YaRN.
std::vector<float> RopeFrequencies(const ModelConfig& config, bool compressed_layer);

}  // namespace strata::engine
