#include "engine/experts.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace strata::engine {

absl::Status LocalExperts::Run(int64_t layer, const float* x, int64_t n, const int32_t* expert_ids,
                               const float* weights, int64_t k, float* out) {
  const LayerWeights& l = weights_.layer(layer);
  return Annotate(backend_.RoutedExperts(l.experts, x, n, expert_ids, weights, k,
                                         static_cast<float>(weights_.config().swiglu_limit), out),
                  absl::StrCat("layer ", layer));
}

}  // namespace strata::engine
