// Private to engine/cpu: the inner loops of CpuBackend::Linear, one table per instruction set.
// CpuBackend (cpu_backend.cc) blocks the work, owns the buffers and threads, and calls these.
//
// The per-ISA files (linear_avx2.cc, linear_avx512.cc, linear_avx512_bf16.cc) are compiled with
// their own -m flags and used only on CPUs that have them (CpuBackend checks at run time).
// Any inline function or template they instantiate with external linkage could be merged by the
// linker with a baseline copy and then run on a CPU without those instructions, so they include
// only this header (plain declarations), <immintrin.h> and <cstdint>/<cstring>, keep all their
// code in an anonymous namespace, and call numerics.cc only through the out-of-line functions
// declared below.
#pragma once

#include <cstdint>

namespace strata::engine::cpu {

// engine::WeightFormat's values, without engine/backend.h (see above).
enum class KernelFormat : uint8_t { kBf16, kF32, kFp8Block, kFp4Block };

struct KernelWeights {
  KernelFormat format;
  const void* data;
  const uint8_t* scale;
  int64_t rows;
  int64_t cols;
};

inline constexpr int64_t kQuantBlock = 128;  // activation / FP8 weight block along cols
inline constexpr int64_t kFp4Group = 32;     // FP4 weight scale group along cols
inline constexpr int64_t kPadFloats = 32;    // panels and activation rows are padded to this

constexpr int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct LinearKernelTable {
  const char* name;

  // Activation quantization of one row (MODEL.md §2), bit-identical to the scalar reference: for
  // every block b of kQuantBlock along [0, cols) (the last one partial),
  //   exps[b]   = PowerOfTwoScaleExponent(amax_b, 448, 1e-4) = e,
  //   codes[k]  = FloatToE4M3(x[k] / 2^e)          (skipped when codes is null),
  //   xq[k]     = E4M3ToFloat(codes[k]) · 2^e      (exact).
  // xq[cols, RoundUp(cols, kPadFloats)) is zero-filled. x must be finite.
  void (*quantize_row)(const float* x, int64_t cols, float* xq, uint8_t* codes, int8_t* exps);

  // Decodes rows [r0, r0 + nrows) × cols [k0, k0 + kc) of `w` to FP32 with the block scales
  // folded in (FP8: E4M3 · UE8M0 of its 128×128 block; FP4: E2M1 · UE8M0 of its group of 32) into
  // panel[i * ldp + k], and zero-fills k in [kc, RoundUp(kc, kPadFloats)). k0 % kQuantBlock == 0.
  // Scaling by a power of two is exact, so Σ x'·w' equals the reference's scaled block sums up to
  // summation order (for scales that keep the products normal and finite).
  void (*decode)(const KernelWeights& w, int64_t r0, int64_t nrows, int64_t k0, int64_t kc,
                 float* panel, int64_t ldp);

  // Dot form, for few activation rows: for m < mr, i < nx,
  //   y[i * ldy + m] += Σ_{k < kc} panel[m * ldp + k] · x[i * ldx + k].
  // kc % kPadFloats == 0, mr <= dot_rows, nx <= dot_xrows.
  void (*dot)(const float* panel, int64_t ldp, int mr, const float* x, int64_t ldx, int nx,
              int64_t kc, float* y, int64_t ldy);
  int dot_rows;
  int dot_xrows;

  // Strip form, for many activation rows: the weight panel is transposed into a strip
  // [kc][strip_rows] (pack_strip; panel has strip_rows rows), activations are packed in tiles
  // [k][strip_xrows], and strip() adds y[i * ldy + r] += Σ_k strip[k][r] · xpack[k][i] for
  // r < rows, i < nx (nx <= strip_xrows, rows <= strip_rows).
  void (*pack_strip)(const float* panel, int64_t ldp, int64_t kc, float* strip);
  void (*strip)(const float* strip, const float* xpack, int64_t kc, int nx, int rows, float* y,
                int64_t ldy);
  int strip_rows;
  int strip_xrows;
  // Calls with at least this many activation rows use the strip form (measured crossover).
  int strip_min_n;
};

// Kernels for FP8 / FP4 weights (and BF16 weights with BF16 activations) on CPUs with AVX512-BF16
// and VBMI. Both factors of every product are exactly representable in BF16 (E4M3 or E2M1 times a
// power of two), so vdpbf16ps forms the products exactly and sums them in FP32, like the FP32
// kernels but with twice the multiply-adds per instruction; E4M3 bytes become BF16 through two
// 128-entry byte tables (vpermt2b), E2M1 nibbles through a 32-entry word table already scaled
// (vpermw). These hold for scales that keep every product a normal FP32 number (the instruction
// flushes subnormals); the driver falls back to the FP32 kernels for blocks with a scale outside
// [kBf16MinScale, kBf16MaxScale]. With BF16 weights, subnormal inputs and products below 2^-126
// count as zero: at most K·2^-126 away from FP32 arithmetic over K columns.
inline constexpr int kBf16MinScale = 64;   // UE8M0 2^-63
inline constexpr int64_t kDotRange = 256;  // column ranges of the BF16 dot form
inline constexpr int kBf16MaxScale = 190;  // UE8M0 2^63

struct Bf16KernelTable {
  const char* name;

  // Dot form. Activations go to `xb` as BF16 (row stride ldxb >= RoundUp(cols, 64)) in the
  // order the weight decoding produces.
  // FP8: x'·sw for the 128-row block whose scale row is `scales`; false (nothing written) if a
  // scale is outside [kBf16MinScale, kBf16MaxScale].
  bool (*prepare_fp8)(const float* xq, int64_t ldx, int64_t n, int64_t cols, const uint8_t* scales,
                      uint16_t* xb, int64_t ldxb);
  void (*prepare_fp4)(const float* xq, int64_t ldx, int64_t n, int64_t cols, uint16_t* xb,
                      int64_t ldxb);
  // y[i * ldy + m] += Σ_k w[m][k] · x[i][k] for m < mr, i < nx, with mr·nx <= 16, nx <= 8:
  // w = E4M3 rows [mr][cols] (row stride cols; scales already in xb), or packed E2M1 rows
  // [mr][cols / 2] with their scales [mr][cols / 32]; dot_fp4 returns false (nothing written)
  // if a scale is outside [kBf16MinScale, kBf16MaxScale].
  // The sum may be split into column ranges [k_begin, k_end) (multiples of kDotRange but the
  // last), called in order: `state` (16·mr·nx floats) carries the partial sums between them, and
  // the last range (k_end == cols) adds the total to y. Every split gives the same bits.
  void (*dot_fp8)(const uint8_t* w, int64_t cols, int64_t k_begin, int64_t k_end, int mr,
                  const uint16_t* xb, int64_t ldxb, int nx, float* state, float* y, int64_t ldy);
  bool (*dot_fp4)(const uint8_t* w, const uint8_t* scales, int64_t cols, int64_t k_begin,
                  int64_t k_end, int mr, const uint16_t* xb, int64_t ldxb, int nx, float* state,
                  float* y, int64_t ldy);
  // BF16 weights, for activations that are BF16 values already (the model rounds linear inputs
  // to BF16): prepare_plain stores them in natural order, dot_bf16 is dot_fp8 for BF16 rows.
  void (*prepare_plain)(const float* xq, int64_t ldx, int64_t n, int64_t cols, uint16_t* xb,
                        int64_t ldxb);
  void (*dot_bf16)(const uint16_t* w, int64_t cols, int64_t k_begin, int64_t k_end, int mr,
                   const uint16_t* xb, int64_t ldxb, int nx, float* state, float* y, int64_t ldy);

  // Strip form, on panels decoded (and scaled) by the FP32 kernels: pack_x packs nx <= strip_xrows
  // activation rows as BF16 pairs [RoundUp(cols, kPadFloats) / 2][strip_xrows]; pack_strip turns
  // a panel of strip_rows rows × kc (kc % kPadFloats == 0) into pairs [kc / 2][strip_rows];
  // strip() adds y[i * ldy + r] += Σ_pairs (both products) for r < rows, i < nx.
  void (*pack_x)(const float* xq, int64_t ldx, int nx, int64_t cols, uint32_t* xpack);
  void (*pack_strip)(const float* panel, int64_t ldp, int64_t kc, uint32_t* strip);
  void (*strip)(const uint32_t* strip, const uint32_t* xpack, int64_t pairs, int nx, int rows,
                float* y, int64_t ldy);
  int strip_rows;
  int strip_xrows;
  int strip_min_n;  // as in LinearKernelTable
};

const LinearKernelTable& GenericLinearKernels();
// Null when this build has no such kernels (a non-x86 target); the caller checks the CPU.
const LinearKernelTable* Avx2LinearKernels();
const LinearKernelTable* Avx512LinearKernels();
const Bf16KernelTable* Avx512Bf16LinearKernels();

// numerics.cc, re-declared here so the per-ISA files need not include engine/numerics.h.
float E4M3ToFloatOutOfLine(uint8_t bits);
int ActivationScaleExponent(float amax);  // PowerOfTwoScaleExponent(amax, 448, 1e-4)

}  // namespace strata::engine::cpu
