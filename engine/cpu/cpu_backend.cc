#include "engine/cpu/cpu_backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu/linear_kernels.h"

namespace strata::engine {
namespace {

using cpu::Bf16KernelTable;
using cpu::KernelFormat;
using cpu::KernelWeights;
using cpu::kFp4Group;
using cpu::kPadFloats;
using cpu::kQuantBlock;
using cpu::LinearKernelTable;
using cpu::RoundUp;

// Blocking. Dot form (n < strip_min_n of the kernels): the weights stream through once per call;
// each work item is a group of weight rows, decoded a register tile of rows at a time (FP32
// kernels: kDotChunk columns into a panel that stays in L1 while every activation row passes
// over it; BF16 kernels: in registers, again for every 8 activation rows). Strip form: items are
// (block of kStripBlockRows activation rows, strip of strip_rows weight rows); the strip's
// decoded [kStripChunk][strip_rows] panel stays in L1, the block's packed activations in L2/L3,
// and each weight is decoded once per block. Which form is faster where was measured
// (bench/micro/linear_bench.cc); both give the same numbers up to summation order.
constexpr int64_t kDotChunk = 1024;
constexpr int64_t kDotBlockRows = 32;
constexpr int64_t kDotBf16Range = 1024;  // a multiple of cpu::kDotRange
constexpr int64_t kStripChunk = 256;
constexpr int64_t kStripBlockRows = 256;

const LinearKernelTable* KernelsFor(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric:
      return &cpu::GenericLinearKernels();
    case CpuIsa::kAvx2:
      return cpu::Avx2LinearKernels();
    case CpuIsa::kAvx512:
    case CpuIsa::kAvx512Bf16:
      return cpu::Avx512LinearKernels();
    case CpuIsa::kAuto:
      break;
  }
  return nullptr;
}

const Bf16KernelTable* Bf16KernelsFor(CpuIsa isa) {
  return isa == CpuIsa::kAvx512Bf16 ? cpu::Avx512Bf16LinearKernels() : nullptr;
}

bool CpuHas(CpuIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  switch (isa) {
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case CpuIsa::kAvx512:
      return avx512;
    case CpuIsa::kAvx512Bf16:
      return avx512 && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bf16");
    default:
      return true;
  }
#else
  return isa == CpuIsa::kGeneric || isa == CpuIsa::kAuto;
#endif
}

// A 64-byte aligned buffer that only grows: the hot path reuses it without allocating.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  template <typename T>
  T* Reserve(int64_t count) {
    const int64_t bytes =
        RoundUp(std::max<int64_t>(count, 16) * static_cast<int64_t>(sizeof(T)), 64);
    if (bytes > capacity_) {
      std::free(data_);
      data_ = std::aligned_alloc(64, static_cast<size_t>(bytes));
      if (data_ == nullptr) throw std::bad_alloc();
      capacity_ = bytes;
    }
    return static_cast<T*>(data_);
  }

  template <typename T>
  T* Get() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  int64_t capacity_ = 0;
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "CpuBackend::Linear: %s\n", message.c_str());
  std::abort();
}

// Asks for rows [r, r + nrows) × cols [k0, k0 + kc) of w to be brought into L2 ahead of use: the
// dot form reads a few short interleaved row streams at a time, which the hardware prefetchers
// follow too late to keep memory busy.
void PrefetchBlock(const KernelWeights& w, int64_t r, int64_t nrows, int64_t k0, int64_t kc) {
  const int64_t bits = w.format == KernelFormat::kF32        ? 32
                       : w.format == KernelFormat::kBf16     ? 16
                       : w.format == KernelFormat::kFp8Block ? 8
                                                             : 4;
  const char* base = static_cast<const char*>(w.data);
  for (int64_t i = r; i < std::min(w.rows, r + nrows); ++i) {
    const char* p = base + (i * w.cols + k0) * bits / 8;
    for (int64_t b = 0; b < kc * bits / 8; b += 64) __builtin_prefetch(p + b, 0, 2);
  }
}

// Row strides of prepared activations: FP32 (+kPadFloats: rows 4 KiB apart would map to the same
// L1 sets) and BF16.
int64_t ActivationStride(int64_t cols) { return RoundUp(cols, kPadFloats) + kPadFloats; }
int64_t Bf16Stride(int64_t cols) { return RoundUp(cols, 64) + 32; }

KernelWeights ToKernel(const WeightView& w) {
  return KernelWeights{static_cast<KernelFormat>(w.format), w.data, w.scale, w.rows, w.cols};
}

int64_t ScaleCount(const KernelWeights& w) {
  return w.format == KernelFormat::kFp8Block ? ((w.rows + kQuantBlock - 1) / kQuantBlock) *
                                                   ((w.cols + kQuantBlock - 1) / kQuantBlock)
                                             : w.rows * (w.cols / kFp4Group);
}

bool ScalesSuitBf16(const KernelWeights& w) {
  const int64_t count = ScaleCount(w);
  for (int64_t i = 0; i < count; ++i) {
    if (w.scale[i] < cpu::kBf16MinScale || w.scale[i] > cpu::kBf16MaxScale) return false;
  }
  return true;
}

}  // namespace

struct CpuBackend::Scratch {
  AlignedBuffer panel;  // decoded weight rows (FP32)
  AlignedBuffer strip;  // the panel transposed, for the strip form
  AlignedBuffer xb;     // BF16 activations scaled for one 128-row block (FP8 dot form)
  AlignedBuffer state;  // BF16 dot form: register tiles' sums between column ranges
};

struct CpuBackend::Buffers {
  AlignedBuffer xq;     // activations [n][ldx], quantized (FP8/FP4) or copied
  AlignedBuffer xpack;  // strip form: tiles of strip_xrows activation rows
  AlignedBuffer xb;     // BF16 activations (FP4 dot form)
  std::vector<int8_t> exps;
};

absl::string_view CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAuto:
      return "auto";
    case CpuIsa::kGeneric:
      return "generic";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx512Bf16:
      return "avx512bf16";
  }
  return "unknown";
}

bool CpuIsaSupported(CpuIsa isa) {
  if (isa == CpuIsa::kAuto) return true;
  if (KernelsFor(isa) == nullptr || !CpuHas(isa)) return false;
  return isa != CpuIsa::kAvx512Bf16 || Bf16KernelsFor(isa) != nullptr;
}

CpuIsa BestCpuIsa() {
  for (CpuIsa isa : {CpuIsa::kAvx512Bf16, CpuIsa::kAvx512, CpuIsa::kAvx2}) {
    if (CpuIsaSupported(isa)) return isa;
  }
  return CpuIsa::kGeneric;
}

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const CpuBackendOptions& options) {
  const CpuIsa isa = options.isa == CpuIsa::kAuto ? BestCpuIsa() : options.isa;
  if (!CpuIsaSupported(isa)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CPU backend: instruction set ", CpuIsaName(isa),
        " is not supported by this CPU or build (best here: ", CpuIsaName(BestCpuIsa()), ")"));
  }
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CPU backend: threads must be >= 0, got ", options.threads));
  }
  int threads = options.threads;
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::unique_ptr<CpuBackend> backend(
      new CpuBackend(isa, KernelsFor(isa), Bf16KernelsFor(isa), threads));
  backend->batch_invariant_ = options.batch_invariant;
  backend->options_ = options;
  return backend;
}

CpuBackend::CpuBackend(CpuIsa isa, const LinearKernelTable* kernels,
                       const Bf16KernelTable* bf16_kernels, int threads)
    : isa_(isa),
      kernels_(kernels),
      bf16_kernels_(bf16_kernels),
      threads_(threads),
      buffers_(std::make_unique<Buffers>()) {
  if (threads_ > 1) pool_ = std::make_unique<cpu::ForkJoinPool>(threads_ - 1);
  for (int i = 0; i < threads_; ++i) scratch_.push_back(std::make_unique<Scratch>());
}

CpuBackend::~CpuBackend() {
  for (const auto& [p, size] : resident_chunks_) munmap(p, size);
}

CpuBackend::LinearForm CpuBackend::FormFor(const cpu::KernelWeights& w, int64_t n,
                                           bool x_is_bf16) const {
  const bool low_precision =
      w.format == KernelFormat::kFp8Block || w.format == KernelFormat::kFp4Block;
  // BF16 products: FP8/FP4 always (the strip form when the scales suit, the dot form checks per
  // block), BF16 weights when the activations are BF16 values (as the model's are).
  const bool bf16_products =
      bf16_kernels_ != nullptr && (low_precision || (w.format == KernelFormat::kBf16 && x_is_bf16));
  if (bf16_products && (batch_invariant_ || n < bf16_kernels_->strip_min_n)) {
    return LinearForm::kDotBf16;
  }
  if (bf16_products && (!low_precision || ScalesSuitBf16(w))) return LinearForm::kStripBf16;
  if (batch_invariant_ || n < kernels_->strip_min_n) return LinearForm::kDot;
  return LinearForm::kStrip;
}

bool CpuBackend::UsesBatchedDot(const WeightView& w, int64_t n) const {
  if (w.format != WeightFormat::kFp4Block || w.cols <= 0 || w.cols % kFp4Group != 0) return false;
  const LinearForm form = FormFor(ToKernel(w), n, /*x_is_bf16=*/true);
  return form == LinearForm::kDotBf16 || form == LinearForm::kDot;
}

void CpuBackend::Linear(const WeightView& w, const float* x, int64_t n, float* y) {
  const int64_t rows = w.rows, cols = w.cols;
  if (n <= 0 || rows <= 0) return;
  if (w.format == WeightFormat::kFp4Block && cols % kFp4Group != 0) {
    Die(absl::StrCat("FP4 weight [", rows, ", ", cols, "]: cols must be a multiple of 32"));
  }
  std::fill(y, y + n * rows, 0.0f);
  if (cols <= 0) return;
  const int64_t ldx = ActivationStride(cols);
  const bool x_is_bf16 = PrepareActivations(w, x, n, ldx);
  const KernelWeights kw = ToKernel(w);
  switch (FormFor(kw, n, x_is_bf16)) {
    case LinearForm::kDotBf16:
      return LinearDotBf16(kw, n, ldx, y);
    case LinearForm::kStripBf16:
      return LinearStripBf16(kw, n, ldx, y);
    case LinearForm::kDot:
      return LinearDot(kw, n, ldx, y);
    case LinearForm::kStrip:
      return LinearStrip(kw, n, ldx, y);
  }
}

bool CpuBackend::PrepareActivations(const WeightView& w, const float* x, int64_t n, int64_t ldx) {
  const int64_t cols = w.cols;
  float* xq = buffers_->xq.Reserve<float>(n * ldx);
  const bool quantize = w.format == WeightFormat::kFp8Block || w.format == WeightFormat::kFp4Block;
  const int64_t blocks = (cols + kQuantBlock - 1) / kQuantBlock;
  if (quantize) buffers_->exps.resize(static_cast<size_t>(n * blocks));
  int8_t* exps = buffers_->exps.data();
  const LinearKernelTable* kernels = kernels_;
  std::atomic<bool> all_bf16{true};
  ForEachItem(n, cols * 8, [&](int, int64_t i) {
    float* row = xq + i * ldx;
    if (quantize) {
      kernels->quantize_row(x + i * cols, cols, row, nullptr, exps + i * blocks);
    } else {
      std::memcpy(row, x + i * cols, static_cast<size_t>(cols) * sizeof(float));
      std::fill(row + cols, row + RoundUp(cols, kPadFloats), 0.0f);
      uint32_t low = 0;  // the bits a BF16 value has zero
      for (int64_t k = 0; k < cols; ++k) {
        uint32_t u;
        std::memcpy(&u, row + k, sizeof(u));
        low |= u;
      }
      if ((low & 0xFFFFu) != 0) all_bf16.store(false, std::memory_order_relaxed);
    }
  });
  return quantize || all_bf16.load();
}

// ---- FP32 kernels --------------------------------------------------------------------------

void CpuBackend::DotRows(int slot, const KernelWeights& w, int64_t r_begin, int64_t r_end,
                         int64_t i_begin, int64_t i_end, const float* xq, int64_t ldx, float* y) {
  const LinearKernelTable& k = *kernels_;
  const int64_t rows = w.rows, cols = w.cols;
  const int64_t chunk = std::min(RoundUp(cols, kQuantBlock), kDotChunk);
  const int64_t ldp = RoundUp(chunk, kPadFloats) + kPadFloats;
  float* panel = scratch_[slot]->panel.Reserve<float>(k.dot_rows * ldp);
  for (int64_t i0 = i_begin; i0 < i_end; i0 += kDotBlockRows) {
    const int64_t i1 = std::min(i_end, i0 + kDotBlockRows);
    for (int64_t r = r_begin; r < r_end; r += k.dot_rows) {
      const int mr = static_cast<int>(std::min<int64_t>(k.dot_rows, r_end - r));
      for (int64_t k0 = 0; k0 < cols; k0 += chunk) {
        const int64_t kc = std::min(chunk, cols - k0);
        if (k0 + chunk < cols) {  // what the next decode reads
          PrefetchBlock(w, r, mr, k0 + chunk, std::min(chunk, cols - k0 - chunk));
        } else {
          PrefetchBlock(w, r + mr, std::min<int64_t>(k.dot_rows, r_end - r - mr), 0,
                        std::min(chunk, cols));
        }
        k.decode(w, r, mr, k0, kc, panel, ldp);
        const int64_t kc_padded = RoundUp(kc, kPadFloats);
        for (int64_t i = i0; i < i1; i += k.dot_xrows) {
          const int nx = static_cast<int>(std::min<int64_t>(k.dot_xrows, i1 - i));
          k.dot(panel, ldp, mr, xq + i * ldx + k0, ldx, nx, kc_padded, y + i * rows + r, rows);
        }
      }
    }
  }
}

void CpuBackend::LinearDot(const KernelWeights& w, int64_t n, int64_t ldx, float* y) {
  const float* xq = buffers_->xq.Get<float>();
  // Groups of 4 register tiles, or of one when that is too few to keep every thread busy (the
  // mHC mixes have 24 rows). Each row's sum is the same whatever the grouping.
  const int64_t tiles = (w.rows + kernels_->dot_rows - 1) / kernels_->dot_rows;
  const int64_t group = kernels_->dot_rows * (tiles >= 8 * threads_ ? 4 : 1);
  const int64_t items = (w.rows + group - 1) / group;
  ForEachItem(items, group * w.cols * n, [&](int slot, int64_t item) {
    DotRows(slot, w, item * group, std::min(w.rows, (item + 1) * group), 0, n, xq, ldx, y);
  });
}

void CpuBackend::LinearStrip(const KernelWeights& w, int64_t n, int64_t ldx, float* y) {
  const int64_t rows = w.rows, cols = w.cols;
  const LinearKernelTable& k = *kernels_;
  const int64_t nr = k.strip_xrows, sr = k.strip_rows;
  const int64_t cols_padded = RoundUp(cols, kPadFloats);

  // Pack the activations into tiles [k][nr] (rows past n are zero).
  const int64_t tiles = (n + nr - 1) / nr;
  float* xpack = buffers_->xpack.Reserve<float>(tiles * cols_padded * nr);
  const float* xq = buffers_->xq.Get<float>();
  ForEachItem(tiles, cols_padded * nr, [&](int, int64_t t) {
    float* out = xpack + t * cols_padded * nr;
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t i = t * nr + j;
      if (i < n) {
        for (int64_t c = 0; c < cols_padded; ++c) out[c * nr + j] = xq[i * ldx + c];
      } else {
        for (int64_t c = 0; c < cols_padded; ++c) out[c * nr + j] = 0.0f;
      }
    }
  });

  const int64_t chunk = std::min(RoundUp(cols, kQuantBlock), kStripChunk);
  const int64_t ldp = RoundUp(chunk, kPadFloats) + kPadFloats;
  const int64_t strips = (rows + sr - 1) / sr;
  const int64_t tiles_per_block = (kStripBlockRows + nr - 1) / nr;
  const int64_t blocks = (tiles + tiles_per_block - 1) / tiles_per_block;
  ForEachItem(blocks * strips, sr * cols * tiles_per_block * nr, [&](int slot, int64_t item) {
    const int64_t block = item / strips, s = item % strips;
    const int64_t r0 = s * sr;
    const int valid_rows = static_cast<int>(std::min(sr, rows - r0));
    float* panel = scratch_[slot]->panel.Reserve<float>(sr * ldp);
    float* strip = scratch_[slot]->strip.Reserve<float>(RoundUp(chunk, kPadFloats) * sr);
    if (valid_rows < sr) std::fill(panel + valid_rows * ldp, panel + sr * ldp, 0.0f);
    const int64_t t_end = std::min(tiles, (block + 1) * tiles_per_block);
    for (int64_t k0 = 0; k0 < cols; k0 += chunk) {
      const int64_t kc = std::min(chunk, cols - k0);
      const int64_t kc_padded = RoundUp(kc, kPadFloats);
      k.decode(w, r0, valid_rows, k0, kc, panel, ldp);
      k.pack_strip(panel, ldp, kc_padded, strip);
      for (int64_t t = block * tiles_per_block; t < t_end; ++t) {
        const int nx = static_cast<int>(std::min(nr, n - t * nr));
        k.strip(strip, xpack + t * cols_padded * nr + k0 * nr, kc_padded, nx, valid_rows,
                y + t * nr * rows + r0, rows);
      }
    }
  });
}

// ---- BF16-product kernels (FP8 / FP4 weights) ------------------------------------------------

// Register tiles of the BF16 dot form: mr weight rows × nx activation rows, mr·nx <= 16.
struct CpuBackend::Bf16Tiles {
  explicit Bf16Tiles(int64_t n) : nx_max(n <= 4 ? 4 : 8), mr_max(n <= 4 ? 4 : 2) {}
  int64_t nx_max, mr_max;
};

// Weight rows [r_begin, r_end) against every activation row, kDotBlockRows of them at a time
// (they stay in L2 while the weight rows pass). With more than one group of nx_max activation
// rows, the columns go in ranges of kDotBf16Range, each group's slice of activations staying in
// L1 while all the weight rows pass; the tiles carry their sums across ranges in `state`, which
// keeps every row's order of operations, and so its bits, independent of n.
// tile(r, mr, i, nx, k_begin, k_end, state) adds one register tile, or returns false having added
// nothing (FP4 scales the BF16 products cannot take): the FP32 kernels do those rows from xq.
template <typename Tile>
void CpuBackend::RunBf16Rows(int slot, const KernelWeights& w, int64_t n, const float* xq,
                             int64_t ldx, int64_t r_begin, int64_t r_end, float* y,
                             const Tile& tile) {
  const Bf16Tiles tiles(n);
  const int64_t cols = w.cols;
  const int64_t range = n <= tiles.nx_max ? cols : kDotBf16Range;
  const int64_t r_tiles = (r_end - r_begin + tiles.mr_max - 1) / tiles.mr_max;
  const int64_t groups = (kDotBlockRows + tiles.nx_max - 1) / tiles.nx_max;
  float* state =
      range < cols ? scratch_[slot]->state.Reserve<float>(r_tiles * groups * 256) : nullptr;
  for (int64_t i0 = 0; i0 < n; i0 += kDotBlockRows) {
    const int64_t i1 = std::min(n, i0 + kDotBlockRows);
    for (int64_t k0 = 0; k0 < cols; k0 += range) {
      const int64_t k1 = std::min(cols, k0 + range);
      for (int64_t i = i0, g = 0; i < i1; i += tiles.nx_max, ++g) {
        const int nx = static_cast<int>(std::min(tiles.nx_max, i1 - i));
        for (int64_t r = r_begin, t = 0; r < r_end; r += tiles.mr_max, ++t) {
          const int mr = static_cast<int>(std::min(tiles.mr_max, r_end - r));
          float* tile_state = state == nullptr ? nullptr : state + (t * groups + g) * 256;
          if (!tile(r, mr, i, nx, k0, k1, tile_state) && k0 == 0 && i == i0) {
            DotRows(slot, w, r, r + mr, i0, i1, xq, ldx, y);  // fails alike for every range
          }
        }
      }
    }
  }
}

// Rows of an FP4 weight [r_begin, r_end) against n activation rows (xq FP32, xb BF16).
void CpuBackend::DotRowsFp4Bf16(int slot, const KernelWeights& w, int64_t n, const float* xq,
                                int64_t ldx, const uint16_t* xb, int64_t ldxb, int64_t r_begin,
                                int64_t r_end, float* y) {
  const Bf16KernelTable& b = *bf16_kernels_;
  const int64_t rows = w.rows, cols = w.cols, lds = cols / kFp4Group;
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  RunBf16Rows(slot, w, n, xq, ldx, r_begin, r_end, y,
              [&](int64_t r, int mr, int64_t i, int nx, int64_t k0, int64_t k1, float* state) {
                return b.dot_fp4(data + r * (cols / 2), w.scale + r * lds, cols, k0, k1, mr,
                                 xb + i * ldxb, ldxb, nx, state, y + i * rows + r, rows);
              });
}

void CpuBackend::LinearDotBf16(const KernelWeights& w, int64_t n, int64_t ldx, float* y) {
  const Bf16KernelTable& b = *bf16_kernels_;
  const int64_t rows = w.rows, cols = w.cols;
  const int64_t ldxb = Bf16Stride(cols);
  const float* xq = buffers_->xq.Get<float>();
  const uint8_t* data = static_cast<const uint8_t*>(w.data);

  if (w.format == KernelFormat::kFp8Block) {
    // Items are 128-row blocks (one activation scaling each), or quarters of them when there are
    // too few blocks to keep every thread busy.
    const int64_t row_blocks = (rows + kQuantBlock - 1) / kQuantBlock;
    const int64_t split = row_blocks >= 4 * threads_ ? 1 : 4;
    const int64_t item_rows = kQuantBlock / split;
    const int64_t scale_cols = (cols + kQuantBlock - 1) / kQuantBlock;
    ForEachItem(row_blocks * split, item_rows * cols * n, [&](int slot, int64_t item) {
      const int64_t r_begin = item * item_rows;
      const int64_t r_end = std::min(rows, r_begin + item_rows);
      if (r_begin >= r_end) return;
      uint16_t* xb = scratch_[slot]->xb.Reserve<uint16_t>(n * ldxb);
      if (!b.prepare_fp8(xq, ldx, n, cols, w.scale + (r_begin / kQuantBlock) * scale_cols, xb,
                         ldxb)) {
        DotRows(slot, w, r_begin, r_end, 0, n, xq, ldx, y);
        return;
      }
      RunBf16Rows(slot, w, n, xq, ldx, r_begin, r_end, y,
                  [&](int64_t r, int mr, int64_t i, int nx, int64_t k0, int64_t k1, float* state) {
                    b.dot_fp8(data + r * cols, cols, k0, k1, mr, xb + i * ldxb, ldxb, nx, state,
                              y + i * rows + r, rows);
                    return true;
                  });
    });
    return;
  }

  uint16_t* xb = buffers_->xb.Reserve<uint16_t>(n * ldxb);
  const int64_t group = DotBf16Group(rows, n);
  const int64_t items = (rows + group - 1) / group;
  if (w.format == KernelFormat::kBf16) {
    b.prepare_plain(xq, ldx, n, cols, xb, ldxb);
    const uint16_t* weights = static_cast<const uint16_t*>(w.data);
    ForEachItem(items, group * cols * n, [&](int slot, int64_t item) {
      RunBf16Rows(slot, w, n, xq, ldx, item * group, std::min(rows, (item + 1) * group), y,
                  [&](int64_t r, int mr, int64_t i, int nx, int64_t k0, int64_t k1, float* state) {
                    b.dot_bf16(weights + r * cols, cols, k0, k1, mr, xb + i * ldxb, ldxb, nx,
                               state, y + i * rows + r, rows);
                    return true;
                  });
    });
    return;
  }
  b.prepare_fp4(xq, ldx, n, cols, xb, ldxb);
  ForEachItem(items, group * cols * n, [&](int slot, int64_t item) {
    DotRowsFp4Bf16(slot, w, n, xq, ldx, xb, ldxb, item * group,
                   std::min(rows, (item + 1) * group), y);
  });
}

int64_t CpuBackend::DotBf16Group(int64_t rows, int64_t n) const {
  // Decode-sized calls stream the weights once: each item is a long run of consecutive rows, so
  // a thread reads one sequential stream the prefetchers follow (16-row items handed out in turn
  // would make each thread's stream jump every 16 rows).
  return n <= Bf16Tiles(n).nx_max
             ? std::max<int64_t>(16, RoundUp(rows / (int64_t{8} * threads_), 16))
             : 16;
}

void CpuBackend::LinearFp4Batch(absl::Span<const LinearJob> jobs) {
  // Activations of every job, quantized (and as BF16 with the BF16 kernels), in one pass.
  std::vector<int64_t>& offsets = batch_offsets_;  // job j's first activation row, then items
  offsets.assign(jobs.size() + 1, 0);
  int64_t max_cols = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const WeightView& w = *jobs[j].w;
    if (w.format != WeightFormat::kFp4Block || w.cols % kFp4Group != 0 || w.cols <= 0) {
      Die("LinearFp4Batch: every weight must be FP4 with cols a positive multiple of 32");
    }
    offsets[j + 1] = offsets[j] + jobs[j].n;
    max_cols = std::max(max_cols, w.cols);
  }
  const int64_t total_rows = offsets.back();
  if (total_rows == 0) return;
  const int64_t ldx = ActivationStride(max_cols), ldxb = Bf16Stride(max_cols);
  float* xq = buffers_->xq.Reserve<float>(total_rows * ldx);
  uint16_t* xb =
      bf16_kernels_ != nullptr ? buffers_->xb.Reserve<uint16_t>(total_rows * ldxb) : nullptr;
  buffers_->exps.resize(static_cast<size_t>(total_rows * ((max_cols + kQuantBlock - 1) /
                                                          kQuantBlock)));
  const LinearKernelTable* kernels = kernels_;
  const Bf16KernelTable* bf16 = bf16_kernels_;
  int8_t* exps = buffers_->exps.data();
  const int64_t exp_stride = (max_cols + kQuantBlock - 1) / kQuantBlock;
  ForEachItem(static_cast<int64_t>(jobs.size()), max_cols * 16, [&](int, int64_t j) {
    const LinearJob& job = jobs[static_cast<size_t>(j)];
    const int64_t cols = job.w->cols, first = offsets[static_cast<size_t>(j)];
    std::fill(job.y, job.y + job.n * job.w->rows, 0.0f);
    for (int64_t i = 0; i < job.n; ++i) {
      kernels->quantize_row(job.x + i * cols, cols, xq + (first + i) * ldx, nullptr,
                            exps + (first + i) * exp_stride);
    }
    if (bf16 != nullptr) bf16->prepare_fp4(xq + first * ldx, ldx, job.n, cols, xb + first * ldxb,
                                           ldxb);
  });

  // Items: runs of consecutive rows of one weight, about four per thread over all the jobs (a
  // small weight is one run), so every thread streams long runs and the pool is woken once.
  int64_t all_rows = 0;
  for (const LinearJob& job : jobs) all_rows += job.w->rows;
  const int64_t run = std::max<int64_t>(16, RoundUp(all_rows / (int64_t{4} * threads_), 16));
  std::vector<int64_t>& item_start = batch_items_;  // job j's first item
  item_start.assign(jobs.size() + 1, 0);
  int64_t total_work = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    item_start[j + 1] = item_start[j] + (jobs[j].w->rows + run - 1) / run;
    total_work += jobs[j].w->rows * jobs[j].w->cols * jobs[j].n;
  }
  const int64_t items = item_start.back();
  ForEachItem(items, total_work / std::max<int64_t>(items, 1), [&](int slot, int64_t item) {
    const size_t j = static_cast<size_t>(
        std::upper_bound(item_start.begin(), item_start.end(), item) - item_start.begin() - 1);
    const LinearJob& job = jobs[j];
    const KernelWeights kw = ToKernel(*job.w);
    const int64_t r_begin = (item - item_start[j]) * run;
    const int64_t r_end = std::min(kw.rows, r_begin + run);
    const float* job_xq = xq + offsets[j] * ldx;
    if (bf16 != nullptr) {
      DotRowsFp4Bf16(slot, kw, job.n, job_xq, ldx, xb + offsets[j] * ldxb, ldxb, r_begin, r_end,
                     job.y);
    } else {
      DotRows(slot, kw, r_begin, r_end, 0, job.n, job_xq, ldx, job.y);
    }
  });
}

void CpuBackend::LinearStripBf16(const KernelWeights& w, int64_t n, int64_t ldx, float* y) {
  const int64_t rows = w.rows, cols = w.cols;
  const Bf16KernelTable& b = *bf16_kernels_;
  const int64_t nr = b.strip_xrows, sr = b.strip_rows;
  const int64_t pairs = RoundUp(cols, kPadFloats) / 2;

  const int64_t tiles = (n + nr - 1) / nr;
  uint32_t* xpack = buffers_->xpack.Reserve<uint32_t>(tiles * pairs * nr);
  const float* xq = buffers_->xq.Get<float>();
  ForEachItem(tiles, pairs * nr * 8, [&](int, int64_t t) {
    const int nx = static_cast<int>(std::min(nr, n - t * nr));
    b.pack_x(xq + t * nr * ldx, ldx, nx, cols, xpack + t * pairs * nr);
  });

  const int64_t chunk = std::min(RoundUp(cols, kQuantBlock), kStripChunk);
  const int64_t ldp = RoundUp(chunk, kPadFloats) + kPadFloats;
  const int64_t strips = (rows + sr - 1) / sr;
  const int64_t tiles_per_block = (kStripBlockRows + nr - 1) / nr;
  const int64_t blocks = (tiles + tiles_per_block - 1) / tiles_per_block;
  ForEachItem(blocks * strips, sr * cols * tiles_per_block * nr, [&](int slot, int64_t item) {
    const int64_t block = item / strips, s = item % strips;
    const int64_t r0 = s * sr;
    const int valid_rows = static_cast<int>(std::min(sr, rows - r0));
    float* panel = scratch_[slot]->panel.Reserve<float>(sr * ldp);
    uint32_t* strip = scratch_[slot]->strip.Reserve<uint32_t>(RoundUp(chunk, kPadFloats) / 2 * sr);
    if (valid_rows < sr) std::fill(panel + valid_rows * ldp, panel + sr * ldp, 0.0f);
    const int64_t t_end = std::min(tiles, (block + 1) * tiles_per_block);
    for (int64_t k0 = 0; k0 < cols; k0 += chunk) {
      const int64_t kc = std::min(chunk, cols - k0);
      const int64_t kc_padded = RoundUp(kc, kPadFloats);
      kernels_->decode(w, r0, valid_rows, k0, kc, panel, ldp);
      b.pack_strip(panel, ldp, kc_padded, strip);
      for (int64_t t = block * tiles_per_block; t < t_end; ++t) {
        const int nx = static_cast<int>(std::min(nr, n - t * nr));
        b.strip(strip, xpack + t * pairs * nr + (k0 / 2) * nr, kc_padded / 2, nx, valid_rows,
                y + t * nr * rows + r0, rows);
      }
    }
  });
}

std::unique_ptr<Backend> MakeCpuBackend(int threads) {
  auto backend = CpuBackend::Create({.threads = std::max(threads, 0)});
  if (!backend.ok()) Die(std::string(backend.status().message()));
  return std::move(*backend);
}

}  // namespace strata::engine
