// Internal to engine/cuda/: device helpers the kernels share — the number formats of MODEL.md §2
// with the host's exact rounding (engine/numerics.cc), block reductions, launch checks.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace strata::engine::cuda {

// A failed launch is a bug in the launcher or a broken device: say where, then stop.
#define STRATA_CUDA_CHECK_LAUNCH(what)                                                            \
  do {                                                                                            \
    const cudaError_t strata_err_ = cudaGetLastError();                                           \
    if (strata_err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "CUDA launch %s failed: %s\n", what, cudaGetErrorString(strata_err_)); \
      std::abort();                                                                               \
    }                                                                                             \
  } while (false)

inline unsigned Blocks(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// ---- BF16 -------------------------------------------------------------------------------------
__device__ __forceinline__ float Bf16ToFloat(uint16_t bits) {
  return __uint_as_float(uint32_t{bits} << 16);
}
// Round to nearest even; NaN stays a quiet NaN (engine/numerics.h FloatToBf16).
__device__ __forceinline__ uint16_t FloatToBf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
__device__ __forceinline__ float RoundBf16(float f) { return Bf16ToFloat(FloatToBf16Bits(f)); }

// ---- FP8 E4M3 (OCP "FN": max 448, 0x7F/0xFF NaN) ----------------------------------------------
__device__ __forceinline__ float E4M3ToFloat(uint8_t b) {
  const int e = (b >> 3) & 0xF, m = b & 0x7;
  float v;
  if (e == 0xF && m == 0x7) {
    v = __int_as_float(0x7FC00000);
  } else if (e == 0) {
    v = ldexpf(static_cast<float>(m), -9);
  } else {
    v = ldexpf(static_cast<float>(8 + m), e - 10);
  }
  return (b & 0x80) ? -v : v;
}
// Round to nearest even, saturating to ±448; NaN → 0x7F (engine/numerics.cc FloatToE4M3).
__device__ __forceinline__ uint8_t FloatToE4M3(float f) {
  if (isnan(f)) return 0x7F;
  const uint8_t sign = signbit(f) ? 0x80 : 0x00;
  const float a = fabsf(f);
  if (a >= 448.0f) return sign | 0x7E;
  int e;
  frexpf(a, &e);  // a = m·2^e, m in [0.5, 1)
  const int quantum_exp = max(e - 1, -6) - 3;
  const float q = ldexpf(1.0f, quantum_exp);
  const float value = rintf(a / q) * q;  // rintf: nearest even
  if (value >= 448.0f) return sign | 0x7E;
  if (value == 0.0f) return sign;
  int ve;
  const float vm = frexpf(value, &ve);
  const int exp_field = ve - 1 + 7;
  if (exp_field <= 0) return sign | static_cast<uint8_t>(value / ldexpf(1.0f, -9));
  return sign |
         static_cast<uint8_t>((exp_field << 3) | static_cast<int>((vm * 2.0f - 1.0f) * 8.0f));
}

// ---- FP4 E2M1 ---------------------------------------------------------------------------------
__device__ __forceinline__ float E2M1ToFloat(uint8_t nibble) {
  const float mags[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = mags[nibble & 7];
  return (nibble & 8) ? -v : v;
}
// Nearest on the grid, ties to the even code, saturating to ±6 (engine/numerics.cc FloatToE2M1).
__device__ __forceinline__ uint8_t FloatToE2M1(float f) {
  const float grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const uint8_t sign = signbit(f) ? 0x8 : 0x0;
  if (isnan(f)) return 0x7;
  const float a = fabsf(f);
  if (a >= 6.0f) return sign | 0x7;
  uint8_t best = 0;
#pragma unroll
  for (uint8_t c = 1; c < 8; ++c) {
    const float mid = 0.5f * (grid[c - 1] + grid[c]);
    if (a > mid || (a == mid && (c & 1) == 0)) best = c;
  }
  return sign | best;
}

// ---- UE8M0 and power-of-two block scales -------------------------------------------------------
__device__ __forceinline__ float Ue8m0ToFloat(uint8_t e) {
  if (e == 0xFF) return __int_as_float(0x7FC00000);
  if (e == 0) return ldexpf(1.0f, -127);
  return __uint_as_float(uint32_t{e} << 23);
}
// 2^ceil(log2(max(amax, floor) / format_max)): the exponent (engine/numerics.cc).
__device__ __forceinline__ int PowerOfTwoScaleExponent(float amax, float format_max,
                                                       float amax_floor) {
  return static_cast<int>(ceilf(log2f(fmaxf(amax, amax_floor) / format_max)));
}
constexpr float kFp8AmaxFloor = 1e-4f;
__device__ __forceinline__ float Fp4AmaxFloor() { return 6.0f * ldexpf(1.0f, -126); }

// ---- math library ------------------------------------------------------------------------------
// exp, cos and sin evaluated in FP64 and rounded once to FP32: correctly rounded in practice, so
// the same as the host's C library (within ~0.5 ulp) far more often than the 1–2 ulp FP32 device
// functions would be.
__device__ __forceinline__ float ExpF(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}
__device__ __forceinline__ void CosSinF(float angle, float* c, float* s) {
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  *c = static_cast<float>(cd);
  *s = static_cast<float>(sd);
}

// ---- reductions ---------------------------------------------------------------------------------
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}
// A reduction over the block (blockDim.x a multiple of 32, ≤ 1024): each warp reduces with
// `warp_op`, then every thread combines the warps' results in warp order with `op` (a fixed order:
// the same in every thread). `shared` holds ≥ 32 floats; the call synchronises the block.
template <typename WarpOp, typename Op>
__device__ __forceinline__ float BlockReduce(float v, float* shared, WarpOp warp_op, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_op(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float r = shared[0];
  for (int i = 1; i < warps; ++i) r = op(r, shared[i]);
  return r;
}
__device__ __forceinline__ float BlockSum(float v, float* shared) {
  return BlockReduce(v, shared, [](float x) { return WarpSum(x); },
                     [](float a, float b) { return a + b; });
}
__device__ __forceinline__ float BlockMax(float v, float* shared) {
  return BlockReduce(v, shared, [](float x) { return WarpMax(x); },
                     [](float a, float b) { return fmaxf(a, b); });
}

}  // namespace strata::engine::cuda
