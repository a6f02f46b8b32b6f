#include "engine/runtime.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace strata::engine {

absl::StatusOr<std::unique_ptr<Runtime>> LoadRuntime(const std::string& model_dir, const RuntimeOptions& options) {
  if (options.backend != "cpu") {
    return absl::UnimplementedError(absl::StrCat("backend '", options.backend, "' is not available in this build (have: cpu)"));
  }
  auto rt = std::make_unique<Runtime>();
  STRATA_ASSIGN_OR_RETURN(rt->checkpoint, Checkpoint::Load(model_dir, {.threads = options.threads}));
  rt->backend = MakeCpuBackend(options.threads);
  STRATA_ASSIGN_OR_RETURN(rt->weights, ModelWeights::Create(*rt->checkpoint, *rt->backend));
  rt->experts = std::make_unique<LocalExperts>(*rt->weights, *rt->backend);
  return rt;
}

}  // namespace strata::engine
