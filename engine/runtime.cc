#include "engine/runtime.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#if STRATA_WITH_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace strata::engine {
namespace {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const RuntimeOptions& options) {
  if (options.backend == "cpu") return MakeCpuBackend(options.threads);
  if (options.backend == "cuda") {
#if STRATA_WITH_CUDA
    return MakeCudaBackend({.device = 0});
#else
    return absl::FailedPreconditionError(
        "backend 'cuda' is not available: this build has no CUDA (nvcc was not found "
        "when it was configured); have: cpu");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", options.backend, "' (cpu or cuda)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Runtime>> LoadRuntime(const std::string& model_dir,
                                                     const RuntimeOptions& options) {
  auto rt = std::make_unique<Runtime>();
  STRATA_ASSIGN_OR_RETURN(rt->backend, MakeBackend(options));  // first: a missing GPU fails fast
  STRATA_ASSIGN_OR_RETURN(rt->checkpoint,
                          Checkpoint::Load(model_dir, {.threads = options.threads}));
  STRATA_ASSIGN_OR_RETURN(rt->weights, ModelWeights::Create(*rt->checkpoint, *rt->backend));
  rt->experts = std::make_unique<LocalExperts>(*rt->weights, *rt->backend);
  return rt;
}

}  // namespace strata::engine
