// CpuBackend: the always-present engine::Backend, and the numerical reference the other backends
// are compared with. Its linear kernels dequantize FP8 / FP4 / BF16 weights in registers and
// accumulate in FP32 (MODEL.md §2); the instruction set (AVX-512, AVX2 or portable C++) is chosen
// at run time, so one binary runs on any x86-64 and the portable path everywhere else.
//
//   auto backend = CpuBackend::Create({.threads = 8});         // or MakeCpuBackend(8)
//   (*backend)->Linear(weight_view, x, n, y);
//
// Tests force an instruction set with CpuBackendOptions::isa to check every path against the
// scalar reference.
//
// Threading: like every Backend, one calling thread at a time; Linear fans out over its own pool.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/thread_pool.h"
#include "engine/backend.h"

namespace strata::engine {

namespace cpu {
struct LinearKernelTable;
struct Bf16KernelTable;
struct KernelWeights;
}  // namespace cpu

// The kernels' instruction set. kAvx2 needs AVX2, FMA and F16C; kAvx512 AVX-512 F/BW/VL/DQ;
// kAvx512Bf16 adds AVX512-VBMI and AVX512-BF16 (Zen 4, Sapphire Rapids), used for FP8 and FP4
// weights (exact BF16 products, FP32 sums; see engine/cpu/linear_kernels.h).
enum class CpuIsa : uint8_t { kAuto, kGeneric, kAvx2, kAvx512, kAvx512Bf16 };

absl::string_view CpuIsaName(CpuIsa isa);
// Whether this build and this CPU can run `isa` (kAuto and kGeneric always can).
bool CpuIsaSupported(CpuIsa isa);
// The best instruction set this build and this CPU support.
CpuIsa BestCpuIsa();

struct CpuBackendOptions {
  int threads = 0;             // 0: one per hardware thread
  CpuIsa isa = CpuIsa::kAuto;  // kAuto: BestCpuIsa()
  // Every row of a linear gets the same summation order whatever the number of rows (the dot
  // form only), so a prompt prefilled whole, in chunks or token by token gives bit-identical KV
  // bytes and logits. (With BF16 weights the kernels depend on whether all of a call's
  // activations are BF16 values, as the model's are; a call mixing in other values sums its
  // rows in FP32 kernels.) Off: the strip form for many rows, whose results differ from
  // decode-sized calls in the last bits.
  bool batch_invariant = true;
};

class CpuBackend final : public Backend {
 public:
  // Fails if `options.isa` is not supported here (see CpuIsaSupported).
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const CpuBackendOptions& options);

  ~CpuBackend() override;

  absl::string_view name() const override { return "cpu"; }
  CpuIsa isa() const { return isa_; }
  int threads() const { return threads_; }

  // See Backend::Linear. Shapes are the caller's contract (the checkpoint loader validates them):
  // kFp4Block needs cols % 32 == 0; a violation aborts with a message. x must be finite.
  void Linear(const WeightView& w, const float* x, int64_t n, float* y) override;

 private:
  struct Scratch;  // one per worker slot: decoded weight panels, BF16 activations
  struct Buffers;  // activations, reused across calls

  CpuBackend(CpuIsa isa, const cpu::LinearKernelTable* kernels,
             const cpu::Bf16KernelTable* bf16_kernels, int threads);

  // Fills the activation buffer (row stride ldx) from x: quantized for FP8/FP4, else copied.
  // Returns whether every activation is a BF16 value (always so after quantization).
  bool PrepareActivations(const WeightView& w, const float* x, int64_t n, int64_t ldx);
  // The FP32 kernels: dot form (few rows of x) and strip form (many).
  void LinearDot(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  // Weight rows [r_begin, r_end) against activation rows [i_begin, i_end), FP32 kernels.
  void DotRows(int slot, const cpu::KernelWeights& w, int64_t r_begin, int64_t r_end,
               int64_t i_begin, int64_t i_end, int64_t ldx, float* y);
  void LinearStrip(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  // The BF16-product kernels: FP8 / FP4 weights, BF16 weights with BF16 activations.
  void LinearDotBf16(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  void LinearStripBf16(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  // Runs fn(slot, item) for item in [0, items) on the pool; each slot is one thread at a time.
  template <typename Fn>
  void ForEachItem(int64_t items, int64_t work_per_item, const Fn& fn);

  const CpuIsa isa_;
  const cpu::LinearKernelTable* const kernels_;
  const cpu::Bf16KernelTable* const bf16_kernels_;  // null unless isa_ == kAvx512Bf16
  const int threads_;
  bool batch_invariant_ = true;
  std::unique_ptr<ThreadPool> pool_;  // threads_ - 1 workers (the caller is the last one)
  std::vector<std::unique_ptr<Scratch>> scratch_;
  std::unique_ptr<Buffers> buffers_;
};

}  // namespace strata::engine
