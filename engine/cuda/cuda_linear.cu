// LaunchLinear (engine/cuda/kernels.h): y = W·x for the checkpoint's weight formats, FP32 sums.
//
// Design. One warp per output row r (8 rows per block), looping over tiles of up to kTileRows
// activation rows. The lanes stride over the row in 16-byte chunks of weights (chunk c goes to
// lane c mod 32), keep one FP32 accumulator per activation row of the tile, and finish with a
// butterfly shuffle sum. Every accumulator sees the same chunks in the same order whatever the
// tile holds, so an output's summation order depends on (r, k) and the weight alone — never on
// n or on which rows share a tile: results are batch invariant. (The path taken — 16-byte chunks
// or one element per lane — depends on the weight's shape and alignment only, for the same
// reason; the x loads' width does not change any sum.)
//
// FP8/FP4: a first kernel quantizes x per 128-block (MODEL.md §2) into `scratch`: xq, the E4M3
// values as floats, and sx, the blocks' scales 2^e. A chunk never straddles a 128-block (16 and
// 32 divide 128) nor, for FP4, a 32-group (a chunk is one group), so each chunk's partial sum
// Σ xq·code is multiplied once by the powers of two of its weight and activation blocks: up to
// the order of the FP32 sums this is the reference's Σ_blocks sx·Σ_k xq·w (scaling by a power of
// two commutes with rounding).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "engine/cuda/cuda_common.cuh"
#include "engine/cuda/kernels.h"

namespace strata::engine::cuda {
namespace {

constexpr int kQuantBlock = 128;  // activation quantization / FP8 weight block
constexpr int kFp4Group = 32;     // FP4 weights: one scale per 32 inputs
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpsPerBlock * 32;
constexpr int kTileRows = 8;  // activation rows per pass over a weight row
constexpr int64_t kMaxGridY = 65535;
// The FP4 decode below yields E2M1 values times 2^-14 (FP16 bit patterns); a chunk's partial
// sum is multiplied by 2^14 to undo it. Both steps are exact.
constexpr float kFp4Unbias = 16384.0f;

// ---- activation quantization --------------------------------------------------------------------

// One warp per (row i, 128-block b): e = ceil(log2(max(amax, 1e-4)/448)), xq = E4M3(x·2^-e)
// decoded, sx = 2^e — the host's QuantizeActivationRow with the same helpers.
__global__ void __launch_bounds__(kThreads)
    QuantizeKernel(const float* x, int64_t ldx, int64_t n, int64_t cols, float* xq, float* sx) {
  const int64_t blocks = (cols + kQuantBlock - 1) / kQuantBlock;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (item >= n * blocks) return;  // warp-uniform: whole warps leave, the shuffles stay full
  const int lane = threadIdx.x & 31;
  const int64_t i = item / blocks, k0 = (item % blocks) * kQuantBlock;
  float v[kQuantBlock / 32];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kQuantBlock / 32; ++j) {
    const int64_t k = k0 + lane + 32 * j;
    v[j] = k < cols ? x[i * ldx + k] : 0.0f;  // padding 0 leaves the max alone
    amax = fmaxf(amax, fabsf(v[j]));
  }
  amax = WarpMax(amax);
  const int e = PowerOfTwoScaleExponent(amax, 448.0f, kFp8AmaxFloor);
  const float inv = ldexpf(1.0f, -e);
#pragma unroll
  for (int j = 0; j < kQuantBlock / 32; ++j) {
    const int64_t k = k0 + lane + 32 * j;
    if (k < cols) xq[i * cols + k] = E4M3ToFloat(FloatToE4M3(__fmul_rn(v[j], inv)));
  }
  if (lane == 0) sx[i * blocks + k0 / kQuantBlock] = ldexpf(1.0f, e);
}

// ---- weight formats -----------------------------------------------------------------------------

struct LinearArgs {
  const void* w;
  const uint8_t* wscale;
  int64_t rows, cols;
  const float* x;  // x[i·ldx + k] (x_offset applied); FP8/FP4: xq, ldx = cols
  int64_t ldx;
  const float* sx;  // FP8/FP4: [n, ceil(cols/128)] activation scales
  int64_t n;
  float* y;  // y[i·ldy + r] (y_offset applied)
  int64_t ldy;
};

// Per format: kWidth elements per 16-byte chunk, the bytes of one weight row, Decode (a chunk
// to floats, in element order), for the scaled formats ChunkScale (the weight scale of a chunk)
// and kUnbias (what the decoded values lack), and DecodeOne (one dequantized element, for the
// element path). Formats without scales accumulate straight into the accumulators.
template <int kKind>
struct Format;

template <>
struct Format<kF32> {
  static constexpr int kWidth = 4;
  static constexpr bool kScaled = false;
  __device__ static int64_t RowBytes(int64_t cols) { return cols * 4; }
  __device__ static void Decode(const uint4& raw, float* w) {
    w[0] = __uint_as_float(raw.x);
    w[1] = __uint_as_float(raw.y);
    w[2] = __uint_as_float(raw.z);
    w[3] = __uint_as_float(raw.w);
  }
  __device__ static float DecodeOne(const LinearArgs& a, int64_t r, int64_t k) {
    return __ldg(static_cast<const float*>(a.w) + r * a.cols + k);
  }
};

template <>
struct Format<kBf16> {
  static constexpr int kWidth = 8;
  static constexpr bool kScaled = false;
  __device__ static int64_t RowBytes(int64_t cols) { return cols * 2; }
  // Little endian: element 2m is the low half of word m.
  __device__ static void Decode(const uint4& raw, float* w) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      w[2 * m] = __uint_as_float(words[m] << 16);
      w[2 * m + 1] = __uint_as_float(words[m] & 0xFFFF0000u);
    }
  }
  __device__ static float DecodeOne(const LinearArgs& a, int64_t r, int64_t k) {
    return Bf16ToFloat(__ldg(static_cast<const unsigned short*>(a.w) + r * a.cols + k));
  }
};

template <>
struct Format<kFp8> {
  static constexpr int kWidth = 16;
  static constexpr bool kScaled = true;
  static constexpr float kUnbias = 1.0f;
  __device__ static int64_t RowBytes(int64_t cols) { return cols; }
  // The hardware E4M3x2 → F16x2 conversion is exact (every E4M3 value, NaN included, is an FP16
  // value) and puts the low byte, the earlier element, in the low half.
  __device__ static void Decode(const uint4& raw, float* w) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int m = 0; m < 4; ++m) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const __nv_fp8x2_storage_t pair =
            static_cast<__nv_fp8x2_storage_t>((words[m] >> (16 * h)) & 0xFFFFu);
        const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3)));
        w[4 * m + 2 * h] = f.x;
        w[4 * m + 2 * h + 1] = f.y;
      }
    }
  }
  __device__ static float ChunkScale(const LinearArgs& a, int64_t r, int64_t k) {
    const int64_t scale_cols = (a.cols + kQuantBlock - 1) / kQuantBlock;
    return Ue8m0ToFloat(__ldg(a.wscale + (r / kQuantBlock) * scale_cols + k / kQuantBlock));
  }
  __device__ static float DecodeOne(const LinearArgs& a, int64_t r, int64_t k) {
    const uint8_t code = __ldg(static_cast<const uint8_t*>(a.w) + r * a.cols + k);
    return E4M3ToFloat(code) * ChunkScale(a, r, k);  // exact: a power-of-two scale
  }
};

// E2M1 nibbles (sign, e1, e0, m) placed at FP16 bits 15, 11, 10, 9 read as the E2M1 value times
// 2^-14, normal (e > 0: 2^(e-15)·(1+m/2)) and subnormal (e = 0: m·2^-15) alike. `pairs` holds
// two nibbles at bits 0–3 and 16–19; the result is their values (times 2^-14) in that order.
__device__ __forceinline__ float2 E2M1PairTimes2Pow14Inv(uint32_t pairs) {
  const uint32_t bits = ((pairs & 0x00070007u) << 9) | ((pairs & 0x00080008u) << 12);
  __half2_raw h;
  h.x = static_cast<unsigned short>(bits & 0xFFFFu);
  h.y = static_cast<unsigned short>(bits >> 16);
  return __half22float2(__half2(h));
}

template <>
struct Format<kFp4> {
  static constexpr int kWidth = 32;  // one chunk = one 32-group
  static constexpr bool kScaled = true;
  static constexpr float kUnbias = kFp4Unbias;
  __device__ static int64_t RowBytes(int64_t cols) { return cols / 2; }
  // Word m holds elements 8m … 8m+7, element 8m+q at bits 4q … 4q+3: shifting by 4q brings
  // elements 8m+q and 8m+q+4 to bits 0–3 and 16–19.
  __device__ static void Decode(const uint4& raw, float* w) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int m = 0; m < 4; ++m) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = E2M1PairTimes2Pow14Inv(words[m] >> (4 * q));
        w[8 * m + q] = f.x;
        w[8 * m + q + 4] = f.y;
      }
    }
  }
  __device__ static float ChunkScale(const LinearArgs& a, int64_t r, int64_t k) {
    return Ue8m0ToFloat(__ldg(a.wscale + r * (a.cols / kFp4Group) + k / kFp4Group));
  }
  __device__ static float DecodeOne(const LinearArgs& a, int64_t r, int64_t k) {
    const uint8_t byte = __ldg(static_cast<const uint8_t*>(a.w) + r * (a.cols / 2) + k / 2);
    const uint32_t nibble = (k & 1) ? (byte >> 4) : (byte & 0xFu);
    return E2M1PairTimes2Pow14Inv(nibble).x * kFp4Unbias * ChunkScale(a, r, k);  // exact
  }
};

// ---- the dot products ---------------------------------------------------------------------------

// x[i][k … k+3] of one activation row: one 16-byte load where the caller found x aligned.
template <bool kVecX>
__device__ __forceinline__ float4 LoadX4(const float* p) {
  if constexpr (kVecX) {
    return *reinterpret_cast<const float4*>(p);
  } else {
    return make_float4(p[0], p[1], p[2], p[3]);
  }
}

// The 16-byte path (cols a multiple of the chunk width, weight rows 16-byte aligned): lane takes
// chunks lane, lane+32, …; a chunk's products go into its partial sum in element order.
template <int kKind, bool kVecX>
__device__ __forceinline__ void ChunkedRow(const LinearArgs& a, int64_t r, int64_t i0, int nt,
                                           int lane, float (&acc)[kTileRows]) {
  using F = Format<kKind>;
  constexpr int V = F::kWidth;
  const int64_t chunks = a.cols / V;
  const int64_t scale_cols = (a.cols + kQuantBlock - 1) / kQuantBlock;
  const uint4* wrow =
      reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(a.w) + r * F::RowBytes(a.cols));
  // The lane's next kAhead chunks are in flight while it works on one: a warp with few rows to
  // cover (a short weight) would otherwise wait a full memory latency per chunk. (FP4 chunks
  // carry the most work and registers, and a row has the fewest of them.)
  constexpr int kAhead = kKind == kFp4 ? 2 : 4;
  uint4 ring[kAhead];
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    const int64_t c = lane + 32 * s;
    ring[s] = c < chunks ? __ldg(wrow + c) : make_uint4(0, 0, 0, 0);
  }
  for (int64_t c = lane; c < chunks; c += 32) {
    float w[V];
    F::Decode(ring[0], w);
#pragma unroll
    for (int s = 0; s + 1 < kAhead; ++s) ring[s] = ring[s + 1];
    const int64_t ahead = c + 32 * kAhead;
    ring[kAhead - 1] = ahead < chunks ? __ldg(wrow + ahead) : make_uint4(0, 0, 0, 0);
    const int64_t k = c * V;
    float wscale = 1.0f;
    if constexpr (F::kScaled) wscale = F::ChunkScale(a, r, k);
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) {
      if (i < nt) {
        const float* xr = a.x + (i0 + i) * a.ldx + k;
        float p = F::kScaled ? 0.0f : acc[i];
#pragma unroll
        for (int q = 0; q < V / 4; ++q) {
          const float4 xv = LoadX4<kVecX>(xr + 4 * q);
          p = fmaf(xv.x, w[4 * q], p);
          p = fmaf(xv.y, w[4 * q + 1], p);
          p = fmaf(xv.z, w[4 * q + 2], p);
          p = fmaf(xv.w, w[4 * q + 3], p);
        }
        if constexpr (F::kScaled) {
          // Every factor but p is a power of two: the products are exact.
          const float sx = a.sx[(i0 + i) * scale_cols + k / kQuantBlock];
          acc[i] = fmaf(p * F::kUnbias, wscale * sx, acc[i]);
        } else {
          acc[i] = p;
        }
      }
    }
  }
}

// The element path (any shape or alignment): lane takes elements lane, lane+32, ….
template <int kKind>
__device__ __forceinline__ void ElementRow(const LinearArgs& a, int64_t r, int64_t i0, int nt,
                                           int lane, float (&acc)[kTileRows]) {
  using F = Format<kKind>;
  const int64_t scale_cols = (a.cols + kQuantBlock - 1) / kQuantBlock;
  for (int64_t k = lane; k < a.cols; k += 32) {
    const float w = F::DecodeOne(a, r, k);
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) {
      if (i < nt) {
        float xv = a.x[(i0 + i) * a.ldx + k];
        if constexpr (F::kScaled) xv *= a.sx[(i0 + i) * scale_cols + k / kQuantBlock];  // exact
        acc[i] = fmaf(xv, w, acc[i]);
      }
    }
  }
}

// At least 2 blocks (16 warps) per SM, ≤ 128 registers: without the second bound ptxas picks
// tighter budgets for some instantiations and spills; with it the widest (FP4) needs ~123 and
// every instantiation fits without spilling.
template <int kKind, bool kChunked, bool kVecX>
__global__ void __launch_bounds__(kThreads, 2) LinearKernel(const LinearArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= a.rows) return;  // warp-uniform
  for (int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTileRows; i0 < a.n;
       i0 += static_cast<int64_t>(gridDim.y) * kTileRows) {
    const int nt = static_cast<int>(a.n - i0 < kTileRows ? a.n - i0 : kTileRows);
    float acc[kTileRows];
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) acc[i] = 0.0f;
    if constexpr (kChunked) {
      ChunkedRow<kKind, kVecX>(a, r, i0, nt, lane, acc);
    } else {
      ElementRow<kKind>(a, r, i0, nt, lane, acc);
    }
    // The butterfly leaves every lane with the same sum; lane i stores row i's.
    float mine = 0.0f;
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) {
      const float s = WarpSum(acc[i]);
      if (lane == i) mine = s;
    }
    if (lane < nt) a.y[(i0 + lane) * a.ldy + r] = mine;
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int kKind>
void LaunchFormat(const LinearArgs& a, cudaStream_t stream) {
  constexpr int V = Format<kKind>::kWidth;
  const dim3 grid(
      Blocks(a.rows, kWarpsPerBlock),
      static_cast<unsigned>(std::min<int64_t>((a.n + kTileRows - 1) / kTileRows, kMaxGridY)));
  // 16-byte weight chunks need every row aligned: the base, and a row length of whole chunks.
  const bool chunked = a.cols % V == 0 && Aligned16(a.w);
  const bool vec_x = Aligned16(a.x) && a.ldx % 4 == 0;  // then every chunk's x is aligned
  if (!chunked) {
    LinearKernel<kKind, false, false><<<grid, kThreads, 0, stream>>>(a);
  } else if (vec_x) {
    LinearKernel<kKind, true, true><<<grid, kThreads, 0, stream>>>(a);
  } else {
    LinearKernel<kKind, true, false><<<grid, kThreads, 0, stream>>>(a);
  }
  STRATA_CUDA_CHECK_LAUNCH("Linear");
}

}  // namespace

void LaunchLinear(const Weight& w, const float* x, int64_t ldx, int64_t x_offset, int64_t n,
                  float* y, int64_t ldy, int64_t y_offset, float* scratch, cudaStream_t stream) {
  if (n <= 0 || w.rows <= 0) return;
  if (w.kind == kFp4 && w.cols % kFp4Group != 0) {
    std::fprintf(stderr, "LaunchLinear: FP4 weight [%lld, %lld]: cols must be a multiple of 32\n",
                 static_cast<long long>(w.rows), static_cast<long long>(w.cols));
    std::abort();
  }
  LinearArgs a{w.data, w.scale, w.rows, w.cols, x + x_offset, ldx, nullptr, n, y + y_offset, ldy};
  const bool quantized = w.kind == kFp8 || w.kind == kFp4;
  if (quantized) {
    float* xq = scratch;
    float* sx = scratch + n * w.cols;
    const int64_t items = n * ((w.cols + kQuantBlock - 1) / kQuantBlock);
    if (items > 0) {
      QuantizeKernel<<<Blocks(items, kWarpsPerBlock), kThreads, 0, stream>>>(x + x_offset, ldx, n,
                                                                             w.cols, xq, sx);
      STRATA_CUDA_CHECK_LAUNCH("Linear quantize");
    }
    a.x = xq;
    a.ldx = w.cols;
    a.sx = sx;
  }
  switch (w.kind) {
    case kBf16:
      return LaunchFormat<kBf16>(a, stream);
    case kF32:
      return LaunchFormat<kF32>(a, stream);
    case kFp8:
      return LaunchFormat<kFp8>(a, stream);
    case kFp4:
      return LaunchFormat<kFp4>(a, stream);
  }
  std::fprintf(stderr, "LaunchLinear: unknown weight kind %d\n", static_cast<int>(w.kind));
  std::abort();
}

}  // namespace strata::engine::cuda
