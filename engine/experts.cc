#include "engine/experts.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model_ops.h"
#include "engine/numerics.h"

namespace strata::engine {

void RunExpertFfn(Backend& backend, const ExpertWeights& e, const float* x, int64_t n, const float* row_weights,
                  float limit, float* y) {
  const int64_t inter = e.w1.rows;
  std::vector<float> u(static_cast<size_t>(n * inter)), v(static_cast<size_t>(n * inter));
  backend.Linear(e.w1, x, n, u.data());
  backend.Linear(e.w3, x, n, v.data());
  for (int64_t r = 0; r < n; ++r) {
    const float w = row_weights != nullptr ? row_weights[r] : 1.0f;
    for (int64_t i = 0; i < inter; ++i) {
      const size_t idx = static_cast<size_t>(r * inter + i);
      const float ui = std::min(RoundToBf16(u[idx]), limit);
      const float vi = std::clamp(RoundToBf16(v[idx]), -limit, limit);
      u[idx] = row_weights != nullptr ? RoundToBf16(Silu(ui) * vi * w) : RoundToBf16(Silu(ui) * vi);
    }
  }
  backend.Linear(e.w2, u.data(), n, y);
  RoundBf16(y, n * e.w2.rows);
}

absl::Status LocalExperts::Run(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids,
                               const float* weights, int64_t k, float* out) {
  const ModelConfig& c = weights_.config();
  const LayerWeights& l = weights_.layer(layer);
  const int64_t d = c.hidden_size, num_experts = static_cast<int64_t>(l.experts.size());
  // Tokens per expert, in token order.
  std::vector<std::vector<std::pair<int64_t, float>>> assigned(static_cast<size_t>(num_experts));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = expert_ids[t * k + j];
      if (e < 0 || e >= num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", layer, ": expert id ", e, " out of range"));
      }
      assigned[static_cast<size_t>(e)].emplace_back(t, weights[t * k + j]);
    }
  }
  std::fill(out, out + n * d, 0.0f);
  std::vector<float> xs, ws, ys;
  for (int64_t e = 0; e < num_experts; ++e) {
    const auto& rows = assigned[static_cast<size_t>(e)];
    if (rows.empty()) continue;
    const int64_t m = static_cast<int64_t>(rows.size());
    xs.resize(static_cast<size_t>(m * d));
    ws.resize(static_cast<size_t>(m));
    ys.resize(static_cast<size_t>(m * d));
    for (int64_t i = 0; i < m; ++i) {
      std::copy(x + rows[static_cast<size_t>(i)].first * d, x + (rows[static_cast<size_t>(i)].first + 1) * d,
                xs.begin() + i * d);
      ws[static_cast<size_t>(i)] = rows[static_cast<size_t>(i)].second;
    }
    RunExpertFfn(backend_, l.experts[static_cast<size_t>(e)], xs.data(), m, ws.data(),
                 static_cast<float>(c.swiglu_limit), ys.data());
    for (int64_t i = 0; i < m; ++i) {
      float* dst = out + rows[static_cast<size_t>(i)].first * d;
      const float* src = ys.data() + i * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
    }
  }
  return absl::OkStatus();
}

}  // namespace strata::engine
