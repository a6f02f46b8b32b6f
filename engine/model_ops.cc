#include "engine/model_ops.h"

#include <algorithm>
#include <cmath>

namespace strata::engine {

std::vector<float> RopeFrequencies(const ModelConfig& c, bool compressed_layer) {
  const int64_t r = c.qk_rope_head_dim;
  const double theta = compressed_layer ? c.compress_rope_theta : c.rope_theta;
  std::vector<float> freqs(static_cast<size_t>(r / 2));
  for (int64_t j = 0; j < r / 2; ++j) {
    const float power =
        static_cast<float>(std::pow(theta, static_cast<double>(2 * j) / static_cast<double>(r)));
    freqs[static_cast<size_t>(j)] = 1.0f / power;
  }
  if (compressed_layer && c.has_rope_scaling) {
    const RopeScaling& y = c.rope_scaling;
    const double l0 = static_cast<double>(y.original_max_position_embeddings);
    const double two_ln_theta = 2.0 * std::log(theta);
    double low =
        std::floor(static_cast<double>(r) * std::log(l0 / (2 * M_PI * y.beta_fast)) / two_ln_theta);
    double high =
        std::ceil(static_cast<double>(r) * std::log(l0 / (2 * M_PI * y.beta_slow)) / two_ln_theta);
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(r - 1));
    if (low == high) high += 0.001;
    const float factor = static_cast<float>(y.factor);
    for (int64_t j = 0; j < r / 2; ++j) {
      float ramp =
          (static_cast<float>(j) - static_cast<float>(low)) / static_cast<float>(high - low);
      ramp = std::min(std::max(ramp, 0.0f), 1.0f);
      const float gamma = 1.0f - ramp;
      float& f = freqs[static_cast<size_t>(j)];
      f = f / factor * (1.0f - gamma) + f * gamma;
    }
  }
  return freqs;
}

}  // namespace strata::engine
