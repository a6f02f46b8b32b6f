#include "prefill/step_cost.h"

#include <algorithm>
#include <cmath>

namespace strata::prefill {

void StepCostModel::Observe(double tokens, double token_positions, double ms) {
  if (tokens <= 0 || ms < 0) return;
  s11_ = kForget * s11_ + tokens * tokens;
  s12_ = kForget * s12_ + tokens * token_positions;
  s22_ = kForget * s22_ + token_positions * token_positions;
  t1_ = kForget * t1_ + tokens * ms;
  t2_ = kForget * t2_ + token_positions * ms;
  ++steps_;
  const double det = s11_ * s22_ - s12_ * s12_;
  // Steps all at about the same depth cannot tell a from b: then the context term is unknown and
  // the per-token cost is all a (still right for steps like the ones seen).
  if (det > 1e-9 * s11_ * s22_ && s22_ > 0) {
    a_ = (t1_ * s22_ - t2_ * s12_) / det;
    b_ = (s11_ * t2_ - s12_ * t1_) / det;
  } else {
    a_ = t1_ / s11_;
    b_ = 0;
  }
  if (a_ < 0 || b_ < 0) {  // noise: keep the physically meaningful part
    if (b_ < 0) {
      b_ = 0;
      a_ = t1_ / s11_;
    }
    if (a_ < 0) {
      a_ = 0;
      b_ = s22_ > 0 ? t2_ / s22_ : 0;
    }
  }
}

double StepCostModel::Cost(int64_t n, int64_t p) const {
  const double dn = static_cast<double>(n);
  return dn * (a_ + b_ * (static_cast<double>(p) + dn / 2));
}

int64_t StepCostModel::TokensWithin(double ms, int64_t p, int64_t limit) const {
  if (!ready() || limit <= 0) return std::max<int64_t>(limit, 0);
  if (ms <= 0) return 0;
  // (b/2)·n² + (a + b·p)·n − ms = 0
  const double lin = a_ + b_ * static_cast<double>(p);
  double n;
  if (b_ <= 0) {
    n = lin > 0 ? ms / lin : static_cast<double>(limit);
  } else {
    n = (-lin + std::sqrt(lin * lin + 2 * b_ * ms)) / b_;
  }
  return std::clamp<int64_t>(static_cast<int64_t>(std::floor(n)), 0, limit);
}

}  // namespace strata::prefill
