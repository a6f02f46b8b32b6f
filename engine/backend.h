// engine::Backend: where the model's heavy ops run. The forward pass (engine/model.h) calls only
// this interface; CpuBackend (engine/cpu/) is always built and is the reference, CudaBackend
// (engine/cuda/) joins when the project is built with CUDA. Parity tests run every op on every
// backend present.
//
// Numerics follow MODEL.md §2/§5: weights stay in their checkpoint formats (BF16, FP8 E4M3 with
// one UE8M0 scale per 128×128 block, packed FP4 E2M1 with one UE8M0 scale per 32 inputs); before
// an FP8 or FP4 linear the activations are quantized per block of 128 along the input dimension
// to E4M3 with a power-of-two scale 2^ceil(log2(max(amax, 1e-4)/448)); accumulation is FP32.
//
// Threading: a backend is used by one thread at a time (the engine's step loop); it may use
// worker threads of its own inside an op.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/strings/string_view.h"

namespace strata::engine {

enum class WeightFormat : uint8_t {
  kBf16,      // data: uint16 BF16 [rows, cols]
  kF32,       // data: float [rows, cols]
  kFp8Block,  // data: E4M3 [rows, cols]; scale: UE8M0 [ceil(rows/128), ceil(cols/128)]
  kFp4Block,  // data: packed E2M1 [rows, cols/2] (element 2i low nibble); scale: UE8M0 [rows, cols/32]
};

inline absl::string_view WeightFormatName(WeightFormat format) {
  switch (format) {
    case WeightFormat::kBf16: return "bf16";
    case WeightFormat::kF32: return "f32";
    case WeightFormat::kFp8Block: return "fp8";
    case WeightFormat::kFp4Block: return "fp4";
  }
  return "?";
}

// A weight matrix y = W x with W of shape [rows (out), cols (in)], as the checkpoint stores it.
// Borrowed: the memory belongs to the checkpoint (mmap) or the backend.
struct WeightView {
  WeightFormat format = WeightFormat::kBf16;
  const void* data = nullptr;
  const uint8_t* scale = nullptr;  // UE8M0 bytes for kFp8Block / kFp4Block
  int64_t rows = 0;
  int64_t cols = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual absl::string_view name() const = 0;

  // y[n, rows] = x[n, cols] · Wᵀ in FP32. For kFp8Block and kFp4Block, x is first quantized
  // per 128-block of each row to E4M3 (see above); for kBf16 and kF32, x is used as given
  // (callers pass BF16-representable values where the model says so). `x` and `y` are host
  // arrays for CpuBackend.
  virtual void Linear(const WeightView& w, const float* x, int64_t n, float* y) = 0;
};

// The always-present CPU backend; `threads` 0 = one per hardware thread.
std::unique_ptr<Backend> MakeCpuBackend(int threads = 0);

}  // namespace strata::engine
