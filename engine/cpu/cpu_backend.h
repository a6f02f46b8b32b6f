// CpuBackend: the always-present engine::Backend, and the numerical reference the other backends
// are compared with. Its memory is host memory. Its linear kernels dequantize FP8 / FP4 / BF16
// weights in registers and accumulate in FP32 (MODEL.md §2); the instruction set (AVX-512, AVX2
// or portable C++) is chosen at run time, so one binary runs on any x86-64 and the portable path
// everywhere else. The other ops (norms, mHC, RoPE, compressors, indexer, attention, routing,
// experts) run their inner loops through engine/cpu/vector_ops.h, also chosen at run time.
//
//   auto backend = CpuBackend::Create({.threads = 8});         // or MakeCpuBackend(8)
//   (*backend)->Linear(weight_view, x, n, y);
//
// Tests force an instruction set with CpuBackendOptions::isa to check every linear path against
// the scalar reference (tests/unit/engine/reference_backend.h), and run every op against it.
//
// Threading: like every Backend, one calling thread at a time; every op fans out over the
// backend's own pool (threads − 1 workers plus the caller).
//
// Files: cpu_backend.cc (memory, linears), cpu_ops.cc (dense ops, mHC, MoE),
// cpu_attention.cc (RoPE, KV entries, compressors, indexer, attention).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/cpu/fork_join.h"
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
  // MakeResident copies weights into memory of its own on 2 MiB pages (see cpu_ops.cc) instead of
  // reading them from the mapped checkpoint: faster decode, at the cost of a copy at load.
  bool copy_weights = true;
};

class CpuBackend final : public Backend {
 public:
  // Fails if `options.isa` is not supported here (see CpuIsaSupported).
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const CpuBackendOptions& options);

  ~CpuBackend() override;

  absl::string_view name() const override { return "cpu"; }
  CpuIsa isa() const { return isa_; }
  int threads() const { return threads_; }

  absl::StatusOr<void*> Allocate(int64_t bytes) override;
  void Free(void* ptr) override;
  void ToDevice(void* dst, const void* host_src, int64_t bytes) override;
  void ToHost(void* host_dst, const void* src, int64_t bytes) override;
  void Copy(void* dst, const void* src, int64_t bytes) override;
  absl::StatusOr<const void*> MakeResident(const void* host, int64_t bytes) override;
  void Zero(void* dst, int64_t bytes) override;
  bool host_memory() const override { return true; }
  void SealRecords(absl::Span<const KvRecordSeal> seals) override;

  // See Backend::Linear. Shapes are the caller's contract (the checkpoint loader validates them):
  // kFp4Block needs cols % 32 == 0; a violation aborts with a message. x must be finite.
  void Linear(const WeightView& w, const float* x, int64_t n, float* y) override;
  void GroupedLinear(const WeightView& w, int64_t groups, const float* x, int64_t n,
                     float* y) override;
  void Embed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n, int64_t copies,
             float* out) override;
  void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
               float* out) override;
  void RoundBf16(float* x, int64_t n) override;
  void ScaleBf16(float* x, int64_t n, float factor) override;
  void AddBf16(const float* a, const float* b, int64_t n, float* out) override;
  void GatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                  float* dst) override;

  void HcPre(const HcParams& p, const float* streams, int64_t rows, float* mix,
             float* x_out) override;
  void HcPost(const HcParams& p, const float* mix, const float* y, int64_t rows,
              float* streams) override;
  void HcHead(const HcParams& p, const float* streams, int64_t rows, float* out) override;

  void QueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                  const RopeTable& rope, const int64_t* positions) override;
  void Rope(float* x, int64_t rows, int64_t stride, const RopeTable& rope,
            const int64_t* positions) override;
  void IndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim, const RopeTable& rope,
                      const int64_t* positions) override;
  void EncodeMainEntries(float* v, int64_t rows, const KvEntryFormat& f, uint8_t* out) override;
  void AddApe(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
              const int64_t* positions) override;
  void Compress(const StepBatch& step, const CompressorParams& p, const KvEntryFormat& f,
                const float* a, const float* z, const KvPoolView& pool) override;
  void IndexerTopK(const StepBatch& step, const IndexerParams& p, const KvEntryFormat& f,
                   const float* q, const float* w, const KvPoolView& pool, int32_t* chosen,
                   int32_t* count) override;
  void Attention(const StepBatch& step, const AttentionParams& p, const KvEntryFormat& f,
                 const float* q, const float* kv, const int32_t* chosen, const int32_t* count,
                 const KvPoolView& pool, float* o) override;
  void StoreWindow(const StepBatch& step, const KvEntryFormat& f, int64_t window,
                   int64_t window_offset, const uint8_t* entries) override;

  void RouteExperts(const RouterParams& p, const float* logits, const int32_t* tokens, int64_t rows,
                    int32_t* ids, float* weights) override;
  void SwiGlu(const float* u, const float* v, int64_t rows, int64_t inter, const float* row_weights,
              float limit, float* h) override;
  absl::Status RoutedExperts(absl::Span<const ExpertWeights> experts, const float* x, int64_t rows,
                             const int32_t* ids, const float* weights, int64_t k, float limit,
                             float* out) override;

 private:
  struct Scratch;  // one per worker slot: decoded weight panels, BF16 activations
  struct Buffers;  // activations, reused across calls

  CpuBackend(CpuIsa isa, const cpu::LinearKernelTable* kernels,
             const cpu::Bf16KernelTable* bf16_kernels, int threads);

  // Fills the activation buffer (row stride ldx) from x: quantized for FP8/FP4, else copied.
  // Returns whether every activation is a BF16 value (always so after quantization).
  bool PrepareActivations(const WeightView& w, const float* x, int64_t n, int64_t ldx);
  // Which kernels Linear uses for w against n activation rows.
  enum class LinearForm : uint8_t { kDotBf16, kStripBf16, kDot, kStrip };
  LinearForm FormFor(const cpu::KernelWeights& w, int64_t n, bool x_is_bf16) const;
  // The FP32 kernels: dot form (few rows of x) and strip form (many).
  void LinearDot(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  // Weight rows [r_begin, r_end) against activation rows [i_begin, i_end) of xq, FP32 kernels.
  void DotRows(int slot, const cpu::KernelWeights& w, int64_t r_begin, int64_t r_end,
               int64_t i_begin, int64_t i_end, const float* xq, int64_t ldx, float* y);
  void LinearStrip(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  // The BF16-product kernels: FP8 / FP4 weights, BF16 weights with BF16 activations.
  struct Bf16Tiles;
  void LinearDotBf16(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  void LinearStripBf16(const cpu::KernelWeights& w, int64_t n, int64_t ldx, float* y);
  template <typename Tile>
  void RunBf16Rows(int slot, const cpu::KernelWeights& w, int64_t n, const float* xq, int64_t ldx,
                   int64_t r_begin, int64_t r_end, float* y, const Tile& tile);
  void DotRowsFp4Bf16(int slot, const cpu::KernelWeights& w, int64_t n, const float* xq,
                      int64_t ldx, const uint16_t* xb, int64_t ldxb, int64_t r_begin,
                      int64_t r_end, float* y);
  // Weight rows per work item of the BF16 dot form.
  int64_t DotBf16Group(int64_t rows, int64_t n) const;
  // Several FP4 linears in the dot form as one parallel pass (routed experts): each job's y is
  // bit-identical to Linear(*w, x, n, y) when Linear would use a dot form for it, but the pool is
  // woken twice in all instead of twice per linear, and threads stream whole weights.
  struct LinearJob {
    const WeightView* w;
    const float* x;
    int64_t n;
    float* y;
  };
  void LinearFp4Batch(absl::Span<const LinearJob> jobs);
  // Whether LinearFp4Batch can take w against n activation rows (FP4, and Linear's form is a dot).
  bool UsesBatchedDot(const WeightView& w, int64_t n) const;
  // Runs fn(slot, item) for item in [0, items) on the pool; each slot is one thread at a time.
  // Work below kMinParallelWork (≈ multiply-adds) runs on the calling thread: waking workers
  // costs more.
  static constexpr int64_t kMinParallelWork = int64_t{1} << 18;
  template <typename Fn>
  void ForEachItem(int64_t items, int64_t work_per_item, const Fn& fn);
  // Attention of one sequence's rows (cpu_attention.cc).
  void AttendSequence(const StepSequence& s, const AttentionParams& p, const KvEntryFormat& f,
                      const float* q, const float* kv, const int32_t* chosen, const int32_t* count,
                      const KvPoolView& pool, float* o);

  const CpuIsa isa_;
  const cpu::LinearKernelTable* const kernels_;
  const cpu::Bf16KernelTable* const bf16_kernels_;  // null unless isa_ == kAvx512Bf16
  const int threads_;
  bool batch_invariant_ = true;
  std::unique_ptr<cpu::ForkJoinPool> pool_;  // threads_ - 1 workers (the caller is slot 0)
  std::vector<std::unique_ptr<Scratch>> scratch_;
  std::unique_ptr<Buffers> buffers_;
  CpuBackendOptions options_;
  // MakeResident's chunks (address, bytes) and how much of the last one is used.
  static constexpr size_t kResidentChunk = size_t{64} << 20;
  std::vector<std::pair<void*, size_t>> resident_chunks_;
  size_t resident_used_ = 0;
  std::vector<float> op_scratch_;  // ops' step-sized temporaries (mHC μ, expert activations)
  std::vector<int64_t> batch_offsets_, batch_items_;  // LinearFp4Batch's job tables
  // RoutedExperts' tables, reused: expert slot offsets, a cursor per expert, each slot's row.
  std::vector<LinearJob> expert_jobs_;
  std::vector<int64_t> expert_first_, expert_next_, expert_slot_row_;
  // A sequence's decoded window and HCA entries, and (decode-sized steps) its rows' chosen CSA
  // entries, decoded once per call when the sequence has at most kChosenHereRows rows.
  static constexpr int64_t kChosenHereRows = 8;
  std::vector<float> attention_ring_, attention_hca_, attention_chosen_;
};

template <typename Fn>
void CpuBackend::ForEachItem(int64_t items, int64_t work_per_item, const Fn& fn) {
  const int64_t slots = std::min<int64_t>(threads_, items);
  if (slots <= 1 || pool_ == nullptr || items * work_per_item < kMinParallelWork) {
    for (int64_t item = 0; item < items; ++item) fn(0, item);
    return;
  }
  std::atomic<int64_t> next{0};
  pool_->Run(static_cast<int>(slots), [&](int slot) {
    for (int64_t item = next.fetch_add(1); item < items; item = next.fetch_add(1)) fn(slot, item);
  });
}

}  // namespace strata::engine
