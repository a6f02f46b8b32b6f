// CudaBackend: engine::Backend on one NVIDIA GPU, built for Hopper (sm_90a) when the project is
// configured with nvcc (STRATA_WITH_CUDA). Weights, activations, the KV pool and the state slots
// live in device memory, in exactly the CPU backend's layouts (a KV block is the same bytes on
// the GPU, the host, the wire and disk); every op of the forward pass is a kernel in
// engine/cuda/*.cu, run in order on one CUDA stream.
//
//   if (CudaDeviceCount() > 0) auto backend = MakeCudaBackend({.device = 0});
//
// The CPU backend stays the reference: tests/unit/engine/backend_*_test.cc run every op on both
// and compare, and skip the CUDA side where no GPU is present.
//
// Threading: like every Backend, one calling thread at a time.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace strata::engine {

struct CudaBackendOptions {
  int device = 0;
};

// How many CUDA devices this process can use: 0 without a driver or a GPU. Never fails.
int CudaDeviceCount();

// FailedPrecondition when the device cannot be used (none, or not the architecture the kernels
// were built for).
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options);

}  // namespace strata::engine
