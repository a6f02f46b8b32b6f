// The dense ops, mHC, RoPE, query/KV entry preparation and the MoE helpers of the CUDA backend
// (engine/cuda/kernels.h, "cuda_ops.cu"): each computes what engine/backend.h states, mirroring
// CpuBackend (engine/cpu/cpu_ops.cc, cpu_attention.cc) and the scalar reference
// (tests/unit/engine/reference_backend.h) operation by operation.
//
// Exactness. Where the contract fixes every rounding, the kernels perform the same FP32
// operations in the same order: products and sums are written as __fmul_rn/__fadd_rn, which
// nvcc never contracts into fused multiply-adds (the host reference does not fuse them either);
// divisions and square roots are the IEEE ones (__fdiv_rn, __fsqrt_rn). exp, log1p, cos and sin
// are evaluated in FP64 and rounded once to FP32, i.e. correctly rounded in practice — the
// closest one can come to the host's C library (itself within ~0.5 ulp), much closer than the
// 1–2 ulp FP32 device functions. Where a long vector is summed (RMSNorm's and mHC's statistics)
// the order is a fixed block reduction: it depends on the row's length only, never on the batch.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "engine/cuda/cuda_common.cuh"
#include "engine/cuda/kernels.h"

namespace strata::engine::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxElementwiseBlocks = 1u << 16;  // grid-stride loops cover the rest
constexpr int kMaxHc = 16;
constexpr int kMaxMix = (2 + kMaxHc) * kMaxHc;
constexpr int kHeadThreads = 128;  // per-head kernels (query heads, indexer queries)
constexpr int64_t kMaxStaticShared = 48 * 1024;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "CUDA op: %s\n", what);
  std::abort();
}

// The cap applies before the narrowing: Blocks() alone would wrap to 0 past 2^40 values.
unsigned ElementwiseBlocks(int64_t n) {
  return static_cast<unsigned>(
      std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{kMaxElementwiseBlocks}));
}

// ---- scalar helpers -----------------------------------------------------------------------------

__device__ __forceinline__ float Log1pF(float x) {
  return static_cast<float>(log1p(static_cast<double>(x)));
}
// 1/(1 + exp(−x)), as the host writes it.
__device__ __forceinline__ float Sigmoid(float x) {
  return __fdiv_rn(1.0f, __fadd_rn(1.0f, ExpF(-x)));
}
// torch's softplus with threshold 20, then log1p(exp(x)) as two FP32 functions like the host.
__device__ __forceinline__ float Softplus(float x) { return x > 20.0f ? x : Log1pF(ExpF(x)); }
// std::max(m, v): keeps m unless m < v.
__device__ __forceinline__ float HostMax(float m, float v) { return m < v ? v : m; }

// cos/sin of the FP32 angle fp32(t·f) (t = the position as FP32), each rounded once to FP32.
__device__ __forceinline__ void RopeCosSin(int64_t position, float freq, float* c, float* s) {
  const float angle = __fmul_rn(static_cast<float>(position), freq);
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  *c = static_cast<float>(cd);
  *s = static_cast<float>(sd);
}
// (x0, x1) ← (bf16(x0·c − x1·s), bf16(x0·s + x1·c)).
__device__ __forceinline__ void RotatePair(float* x0, float* x1, float c, float s) {
  const float a = *x0, b = *x1;
  *x0 = RoundBf16(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
  *x1 = RoundBf16(__fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c)));
}

// ---- dense elementwise ops ----------------------------------------------------------------------

__global__ void EmbedKernel(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n,
                            int64_t copies, float* out) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n * d;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / d, k = idx % d;
    const float v = Bf16ToFloat(table[static_cast<int64_t>(ids[t]) * d + k]);
    for (int64_t c = 0; c < copies; ++c) out[(t * copies + c) * d + k] = v;
  }
}

// One block per row. out may alias x: each element is read and written by one thread, and only
// after every thread has read the whole row for the statistic (BlockSum synchronises).
__global__ void __launch_bounds__(kThreads)
    RmsNormKernel(const float* x, const float* w, int64_t dim, float eps, float* out) {
  __shared__ float red[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* yr = out + static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float u = RoundBf16(xr[i]);
    ss = fmaf(u, u, ss);  // a sum: its order (not its bits) is all the contract leaves open
  }
  const float total = BlockSum(ss, red);
  const float inv =
      __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(total, static_cast<float>(dim)), eps)));
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float u = RoundBf16(xr[i]);
    yr[i] = RoundBf16(__fmul_rn(__fmul_rn(u, inv), w[i]));
  }
}

__global__ void RoundBf16Kernel(float* x, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = RoundBf16(x[i]);
  }
}

__global__ void ScaleBf16Kernel(float* x, int64_t n, float factor) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = RoundBf16(__fmul_rn(RoundBf16(x[i]), factor));
  }
}

__global__ void AddBf16Kernel(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = RoundBf16(__fadd_rn(a[i], b[i]));
  }
}

// dst[i, :] = src[idx[i], :] (GatherRows and GatherIndexed).
__global__ void GatherKernel(const float* src, int64_t width, const int32_t* idx, int64_t n,
                             float* dst) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * width;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / width, k = e % width;
    dst[e] = src[static_cast<int64_t>(idx[i]) * width + k];
  }
}

// ---- mHC ----------------------------------------------------------------------------------------

// ρ·x̂'s statistic of one row of streams: 1/sqrt(Σx²/n + eps), the sum a fixed block reduction.
__device__ float StreamsRho(const float* x, int64_t n, float eps, float* red) {
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss = fmaf(x[i], x[i], ss);
  const float total = BlockSum(ss, red);
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(total, static_cast<float>(n)), eps)));
}

// x_out[k] = bf16(Σ_i pre_i·X_i[k]), i in order from the first product, for the block's threads.
__device__ void WeightedStreams(const float* pre, const float* x, int64_t hc, int64_t d,
                                float* out) {
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    float sum = __fmul_rn(pre[0], x[k]);
    for (int64_t i = 1; i < hc; ++i) sum = __fadd_rn(sum, __fmul_rn(pre[i], x[i * d + k]));
    out[k] = RoundBf16(sum);
  }
}

// CpuBackend's SublayerMix, one thread: m = ρ·μ (already scaled), mix = [pre | post | comb].
__device__ void SublayerMix(const float* m, const Hc& p, float* mix) {
  const int64_t hc = p.hc;
  const float eps = p.hc_eps;
  const float* b = p.base;
  const float* s = p.scale;
  for (int64_t i = 0; i < hc; ++i) {
    mix[i] = __fadd_rn(Sigmoid(__fadd_rn(__fmul_rn(m[i], s[0]), b[i])), eps);
    mix[hc + i] = __fmul_rn(2.0f, Sigmoid(__fadd_rn(__fmul_rn(m[hc + i], s[1]), b[hc + i])));
  }
  float* c = mix + 2 * hc;
  for (int64_t i = 0; i < hc; ++i) {  // softmax over each row, + eps
    float mx = -INFINITY;
    for (int64_t j = 0; j < hc; ++j) {
      const int64_t at = i * hc + j;
      c[at] = __fadd_rn(__fmul_rn(m[2 * hc + at], s[2]), b[2 * hc + at]);
      mx = HostMax(mx, c[at]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < hc; ++j) {
      c[i * hc + j] = ExpF(__fsub_rn(c[i * hc + j], mx));
      sum = __fadd_rn(sum, c[i * hc + j]);
    }
    for (int64_t j = 0; j < hc; ++j) c[i * hc + j] = __fadd_rn(__fdiv_rn(c[i * hc + j], sum), eps);
  }
  // Sinkhorn: columns, then iters−1 × (rows, columns); each divided by its sum + eps. The first
  // column pass runs even for iters < 1, as in CpuBackend.
  for (int64_t it = 0; it < (p.sinkhorn_iters < 1 ? 1 : p.sinkhorn_iters); ++it) {
    if (it > 0) {
      for (int64_t i = 0; i < hc; ++i) {
        float sum = 0.0f;
        for (int64_t j = 0; j < hc; ++j) sum = __fadd_rn(sum, c[i * hc + j]);
        const float den = __fadd_rn(sum, eps);
        for (int64_t j = 0; j < hc; ++j) c[i * hc + j] = __fdiv_rn(c[i * hc + j], den);
      }
    }
    for (int64_t j = 0; j < hc; ++j) {
      float sum = 0.0f;
      for (int64_t i = 0; i < hc; ++i) sum = __fadd_rn(sum, c[i * hc + j]);
      const float den = __fadd_rn(sum, eps);
      for (int64_t i = 0; i < hc; ++i) c[i * hc + j] = __fdiv_rn(c[i * hc + j], den);
    }
  }
}

// One block per row. mix may alias mu: thread 0 reads the row's μ before the barrier, and the
// mixes are written after it.
__global__ void __launch_bounds__(kThreads)
    HcPreKernel(Hc p, const float* streams, const float* mu, float* mix, float* x_out) {
  __shared__ float red[32];
  __shared__ float m[kMaxMix];
  __shared__ float out_mix[kMaxMix];
  const int64_t t = blockIdx.x, n = p.hc * p.d;
  const float* x = streams + t * n;
  const float rho = StreamsRho(x, n, p.norm_eps, red);
  if (threadIdx.x == 0) {
    for (int64_t i = 0; i < p.mix; ++i) m[i] = __fmul_rn(mu[t * p.mix + i], rho);
    SublayerMix(m, p, out_mix);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < p.mix; i += blockDim.x) mix[t * p.mix + i] = out_mix[i];
  WeightedStreams(out_mix, x, p.hc, p.d, x_out + t * p.d);
}

// One thread per (row, column k): streams[t, j, k] = bf16(post_j·y + Σ_i comb[i·hc + j]·X_i[k]).
// In place, so the thread first copies its column's old X_i[k] (its own shared slots; no other
// thread touches them).
__global__ void __launch_bounds__(kThreads)
    HcPostKernel(Hc p, const float* mix, const float* y, int64_t tiles, float* streams) {
  __shared__ float old[kMaxHc][kThreads];
  const int64_t t = blockIdx.x / tiles;
  const int64_t k = (blockIdx.x % tiles) * kThreads + threadIdx.x;
  if (k >= p.d) return;
  const int64_t hc = p.hc, d = p.d;
  float* x = streams + t * hc * d;
  const float* post = mix + t * p.mix + hc;
  const float* comb = mix + t * p.mix + 2 * hc;
  for (int64_t i = 0; i < hc; ++i) old[i][threadIdx.x] = x[i * d + k];
  const float yv = y[t * d + k];
  for (int64_t j = 0; j < hc; ++j) {
    float sum = __fmul_rn(post[j], yv);
    for (int64_t i = 0; i < hc; ++i) {
      sum = __fadd_rn(sum, __fmul_rn(comb[i * hc + j], old[i][threadIdx.x]));
    }
    x[j * d + k] = RoundBf16(sum);
  }
}

// One block per row: pre_j = σ(μ_j·ρ·s0 + b_j) + hc_eps, out = bf16(Σ_j pre_j X_j).
__global__ void __launch_bounds__(kThreads)
    HcHeadKernel(Hc p, const float* streams, const float* mu, float* out) {
  __shared__ float red[32];
  __shared__ float pre[kMaxHc];
  const int64_t t = blockIdx.x, n = p.hc * p.d;
  const float* x = streams + t * n;
  const float rho = StreamsRho(x, n, p.norm_eps, red);
  if (threadIdx.x < p.hc) {
    const int64_t j = threadIdx.x;
    const float z = __fadd_rn(__fmul_rn(__fmul_rn(mu[t * p.mix + j], rho), p.scale[0]), p.base[j]);
    pre[j] = __fadd_rn(Sigmoid(z), p.hc_eps);
  }
  __syncthreads();
  WeightedStreams(pre, x, p.hc, p.d, out + t * p.d);
}

// ---- RoPE, query heads, indexer queries, KV entries ---------------------------------------------

// One thread per (row, pair j) of the last rope.dim values of each row.
__global__ void RopeKernel(float* x, int64_t rows, int64_t stride, Rope rope,
                           const int64_t* positions) {
  const int64_t pairs = rope.dim / 2;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * pairs;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / pairs, j = e % pairs;
    float* p = x + t * stride + stride - rope.dim + 2 * j;
    float c, s;
    RopeCosSin(positions[t], rope.freqs[j], &c, &s);
    RotatePair(p, p + 1, c, s);
  }
}

// RoPE on the last rope.dim values of a head held in shared memory (the block's threads).
__device__ void RopeShared(float* u, int64_t dim, const Rope& rope, int64_t position) {
  float* r = u + dim - rope.dim;
  for (int64_t j = threadIdx.x; j < rope.dim / 2; j += blockDim.x) {
    float c, s;
    RopeCosSin(position, rope.freqs[j], &c, &s);
    RotatePair(r + 2 * j, r + 2 * j + 1, c, s);
  }
}

// One block per (row, head); shared: u[dim], sq[dim]. Σ bf16(u²) is summed by one thread left to
// right, as the host does: it is rounded to BF16 at once, so every order but the host's would
// move a few heads' results by a BF16 ulp.
__global__ void __launch_bounds__(kHeadThreads)
    QueryHeadsKernel(float* q, int64_t heads, int64_t dim, float eps, Rope rope,
                     const int64_t* positions) {
  extern __shared__ float shared[];
  float* u = shared;
  float* sq = shared + dim;
  __shared__ float gain;
  const int64_t row = blockIdx.x / heads;
  float* qh = q + static_cast<int64_t>(blockIdx.x) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    u[i] = RoundBf16(qh[i]);
    sq[i] = RoundBf16(__fmul_rn(u[i], u[i]));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum = __fadd_rn(sum, sq[i]);
    float s = RoundBf16(__fdiv_rn(sum, static_cast<float>(dim)));
    s = RoundBf16(__fadd_rn(s, eps));
    gain = RoundBf16(__fdiv_rn(1.0f, __fsqrt_rn(s)));
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) u[i] = RoundBf16(__fmul_rn(u[i], gain));
  __syncthreads();
  RopeShared(u, dim, rope, positions[row]);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) qh[i] = u[i];
}

// One block per (row, head); shared: u[dim]. dim is a power of two ≥ 32 (checked by the
// launcher), so the butterfly's pairs are p ↦ (j, j+h), j = (p / h)·2h + p mod h for p < dim/2,
// and each stage's values do not depend on the order its pairs are done in. The FP4 blocks of
// 32 are the warps' 32 consecutive values.
__global__ void __launch_bounds__(kHeadThreads)
    IndexerQueriesKernel(float* q, int64_t heads, int64_t dim, Rope rope,
                         const int64_t* positions) {
  extern __shared__ float u[];
  const int64_t row = blockIdx.x / heads;
  float* qh = q + static_cast<int64_t>(blockIdx.x) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) u[i] = RoundBf16(qh[i]);
  __syncthreads();
  RopeShared(u, dim, rope, positions[row]);
  __syncthreads();
  for (int64_t h = 1; h < dim; h *= 2) {
    for (int64_t p = threadIdx.x; p < dim / 2; p += blockDim.x) {
      const int64_t j = (p / h) * 2 * h + p % h;
      const float a = u[j], b = u[j + h];
      u[j] = __fadd_rn(a, b);
      u[j + h] = __fsub_rn(a, b);
    }
    __syncthreads();
  }
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(dim)));  // fp32(1/√dim)
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {  // i < dim is warp-uniform
    const float v = RoundBf16(__fmul_rn(u[i], scale));
    const float amax = WarpMax(fabsf(v));
    const int e = PowerOfTwoScaleExponent(amax, 6.0f, Fp4AmaxFloor());
    const float code = E2M1ToFloat(FloatToE2M1(__fmul_rn(v, ldexpf(1.0f, -e))));
    qh[i] = __fmul_rn(code, ldexpf(1.0f, e));
  }
}

// One block per row: warp w encodes the 64-blocks w, w+8, … (lane: values lane and lane+32),
// then the block writes the RoPE part and zeroes the rest of the entry.
__global__ void __launch_bounds__(kThreads)
    EncodeMainKernel(float* v, EntryFormat f, uint8_t* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float* vr = v + static_cast<int64_t>(blockIdx.x) * (f.nope + f.rope);
  uint8_t* o = out + static_cast<int64_t>(blockIdx.x) * f.main_bytes;
  const int64_t blocks = f.nope / 64;
  uint8_t* scales = o + f.nope;
  for (int64_t b = warp; b < blocks; b += warps) {
    float* x = vr + b * 64;
    const float v0 = x[lane], v1 = x[lane + 32];
    const float amax = WarpMax(fmaxf(fabsf(v0), fabsf(v1)));
    const int e = PowerOfTwoScaleExponent(amax, 448.0f, kFp8AmaxFloor);
    const float inv = ldexpf(1.0f, -e), s = ldexpf(1.0f, e);
    const uint8_t q0 = FloatToE4M3(__fmul_rn(v0, inv)), q1 = FloatToE4M3(__fmul_rn(v1, inv));
    o[b * 64 + lane] = q0;
    o[b * 64 + lane + 32] = q1;
    x[lane] = __fmul_rn(E4M3ToFloat(q0), s);
    x[lane + 32] = __fmul_rn(E4M3ToFloat(q1), s);
    if (lane == 0) scales[b] = static_cast<uint8_t>(e + 127);
  }
  uint8_t* rope_out = scales + blocks;
  for (int64_t i = threadIdx.x; i < f.rope; i += blockDim.x) {
    const uint16_t bits = FloatToBf16Bits(vr[f.nope + i]);
    rope_out[2 * i] = static_cast<uint8_t>(bits & 0xFF);
    rope_out[2 * i + 1] = static_cast<uint8_t>(bits >> 8);
    vr[f.nope + i] = Bf16ToFloat(bits);
  }
  // Zeros: codes past the last whole 64-block (none when 64 divides nope) and the padding.
  const int64_t used = f.nope + blocks + 2 * f.rope;
  for (int64_t i = blocks * 64 + threadIdx.x; i < f.nope; i += blockDim.x) o[i] = 0;
  for (int64_t i = used + threadIdx.x; i < f.main_bytes; i += blockDim.x) o[i] = 0;
}

__global__ void AddApeKernel(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
                             const int64_t* positions) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * width;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / width, i = e % width;
    z[e] = __fadd_rn(z[e], ape[(positions[t] % ratio) * width + i]);
  }
}

// ---- MoE ----------------------------------------------------------------------------------------

// (v, e) beats (bv, be): a valid id, and a higher score, or an equal one with a lower id. A strict
// total order, so the winner does not depend on the order of the comparisons.
__device__ __forceinline__ bool Beats(float v, int e, float bv, int be) {
  return e >= 0 && (be < 0 || v > bv || (v == bv && e < be));
}

// One block per row; shared: s[E], score[E] (s + bias), chosen[k], taken[E].
__global__ void __launch_bounds__(kThreads)
    RouteKernel(Router p, const float* logits, const int32_t* tokens, int32_t* ids,
                float* weights) {
  extern __shared__ float shared[];
  const int64_t E = p.experts, k = p.k, t = blockIdx.x;
  float* s = shared;
  float* score = s + E;
  int32_t* chosen = reinterpret_cast<int32_t*>(score + E);
  uint8_t* taken = reinterpret_cast<uint8_t*>(chosen + k);
  __shared__ float warp_v[32];
  __shared__ int warp_e[32];
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    s[e] = __fsqrt_rn(Softplus(logits[t * E + e]));
    if (p.tid2eid == nullptr) score[e] = __fadd_rn(s[e], p.bias[e]);
    taken[e] = 0;
  }
  __syncthreads();
  if (p.tid2eid != nullptr) {
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
      chosen[j] = p.tid2eid[static_cast<int64_t>(tokens[t]) * k + j];
    }
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t j = 0; j < k; ++j) {  // k rounds of "the best expert not taken yet"
      float bv = -INFINITY;
      int be = -1;
      for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
        const float v = isnan(score[e]) ? -INFINITY : score[e];
        if (!taken[e] && Beats(v, static_cast<int>(e), bv, be)) {
          bv = v;
          be = static_cast<int>(e);
        }
      }
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xFFFFFFFFu, bv, o);
        const int oe = __shfl_xor_sync(0xFFFFFFFFu, be, o);
        if (Beats(ov, oe, bv, be)) {
          bv = ov;
          be = oe;
        }
      }
      if (lane == 0) {
        warp_v[warp] = bv;
        warp_e[warp] = be;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
          if (Beats(warp_v[w], warp_e[w], bv, be)) {
            bv = warp_v[w];
            be = warp_e[w];
          }
        }
        chosen[j] = be;
        if (be >= 0) taken[be] = 1;
      }
      __syncthreads();
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    auto s_of = [&](int32_t e) { return e >= 0 && e < E ? s[e] : __int_as_float(0x7FC00000); };
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum = __fadd_rn(sum, s_of(chosen[j]));
    for (int64_t j = 0; j < k; ++j) {
      ids[t * k + j] = chosen[j];
      weights[t * k + j] = __fmul_rn(__fdiv_rn(s_of(chosen[j]), sum), p.scaling);
    }
  }
}

// h = bf16(silu(min(bf16(u), limit)) · clamp(bf16(v), −limit, limit) · w); h may alias u.
__global__ void SwiGluKernel(const float* u, const float* v, int64_t rows, int64_t inter,
                             const float* row_weights, float limit, float* h) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * inter;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float ui = RoundBf16(u[e]);
    ui = limit < ui ? limit : ui;  // std::min(ui, limit)
    float vi = RoundBf16(v[e]);
    vi = vi < -limit ? -limit : (limit < vi ? limit : vi);  // std::clamp(vi, -limit, limit)
    float value = __fmul_rn(__fmul_rn(ui, Sigmoid(ui)), vi);
    if (row_weights != nullptr) value = __fmul_rn(value, row_weights[e / inter]);
    h[e] = RoundBf16(value);
  }
}

__global__ void SumExpertOutputsKernel(const float* expert_out, const int32_t* slot, int64_t rows,
                                       int64_t k, int64_t d, float* out) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * d;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / d, c = e % d;
    float sum = 0.0f;  // 0 + first, as the host's zero-filled accumulator
    for (int64_t j = 0; j < k; ++j) {
      sum = __fadd_rn(sum, RoundBf16(expert_out[static_cast<int64_t>(slot[t * k + j]) * d + c]));
    }
    out[e] = sum;
  }
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------

void LaunchEmbed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n, int64_t copies,
                 float* out, cudaStream_t stream) {
  if (n <= 0 || d <= 0 || copies <= 0) return;
  EmbedKernel<<<ElementwiseBlocks(n * d), kThreads, 0, stream>>>(table, d, ids, n, copies, out);
  STRATA_CUDA_CHECK_LAUNCH("Embed");
}

void LaunchRmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out,
                   cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return;
  RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, w, dim, eps, out);
  STRATA_CUDA_CHECK_LAUNCH("RmsNorm");
}

void LaunchRoundBf16(float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  RoundBf16Kernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(x, n);
  STRATA_CUDA_CHECK_LAUNCH("RoundBf16");
}

void LaunchScaleBf16(float* x, int64_t n, float factor, cudaStream_t stream) {
  if (n <= 0) return;
  ScaleBf16Kernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(x, n, factor);
  STRATA_CUDA_CHECK_LAUNCH("ScaleBf16");
}

void LaunchAddBf16(const float* a, const float* b, int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return;
  AddBf16Kernel<<<ElementwiseBlocks(n), kThreads, 0, stream>>>(a, b, n, out);
  STRATA_CUDA_CHECK_LAUNCH("AddBf16");
}

void LaunchGatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n, float* dst,
                      cudaStream_t stream) {
  if (n <= 0 || width <= 0) return;
  GatherKernel<<<ElementwiseBlocks(n * width), kThreads, 0, stream>>>(src, width, idx, n, dst);
  STRATA_CUDA_CHECK_LAUNCH("GatherRows");
}

void LaunchZero(void* dst, int64_t bytes, cudaStream_t stream) {
  if (bytes <= 0) return;
  const cudaError_t err = cudaMemsetAsync(dst, 0, static_cast<size_t>(bytes), stream);
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA launch Zero failed: %s\n", cudaGetErrorString(err));
    std::abort();
  }
}

void LaunchHcPre(const Hc& p, const float* streams, int64_t rows, const float* mu, float* mix,
                 float* x_out, cudaStream_t stream) {
  if (rows <= 0) return;
  if (p.hc < 1 || p.hc > kMaxHc || p.mix != (2 + p.hc) * p.hc) Fail("HcPre: unsupported hc/mix");
  HcPreKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(p, streams, mu, mix, x_out);
  STRATA_CUDA_CHECK_LAUNCH("HcPre");
}

void LaunchHcPost(const Hc& p, const float* mix, const float* y, int64_t rows, float* streams,
                  cudaStream_t stream) {
  if (rows <= 0 || p.d <= 0) return;
  if (p.hc < 1 || p.hc > kMaxHc) Fail("HcPost: unsupported hc");
  const int64_t tiles = (p.d + kThreads - 1) / kThreads;
  HcPostKernel<<<static_cast<unsigned>(rows * tiles), kThreads, 0, stream>>>(p, mix, y, tiles,
                                                                             streams);
  STRATA_CUDA_CHECK_LAUNCH("HcPost");
}

void LaunchHcHead(const Hc& p, const float* streams, int64_t rows, const float* mu, float* out,
                  cudaStream_t stream) {
  if (rows <= 0) return;
  if (p.hc < 1 || p.hc > kMaxHc || p.mix < p.hc) Fail("HcHead: unsupported hc/mix");
  HcHeadKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(p, streams, mu, out);
  STRATA_CUDA_CHECK_LAUNCH("HcHead");
}

void LaunchQueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                      const Rope& rope, const int64_t* positions, cudaStream_t stream) {
  if (rows <= 0 || heads <= 0 || dim <= 0) return;
  const int64_t shared = 2 * dim * static_cast<int64_t>(sizeof(float));
  if (shared > kMaxStaticShared - 64 || rope.dim > dim || rope.dim % 2 != 0) {
    Fail("QueryHeads: unsupported head/rope size");
  }
  QueryHeadsKernel<<<static_cast<unsigned>(rows * heads), kHeadThreads, shared, stream>>>(
      q, heads, dim, eps, rope, positions);
  STRATA_CUDA_CHECK_LAUNCH("QueryHeads");
}

void LaunchRope(float* x, int64_t rows, int64_t stride, const Rope& rope, const int64_t* positions,
                cudaStream_t stream) {
  if (rows <= 0 || rope.dim < 2) return;
  RopeKernel<<<ElementwiseBlocks(rows * (rope.dim / 2)), kThreads, 0, stream>>>(x, rows, stride,
                                                                                rope, positions);
  STRATA_CUDA_CHECK_LAUNCH("Rope");
}

void LaunchIndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim, const Rope& rope,
                          const int64_t* positions, cudaStream_t stream) {
  if (rows <= 0 || heads <= 0) return;
  const int64_t shared = dim * static_cast<int64_t>(sizeof(float));
  if (dim < 32 || (dim & (dim - 1)) != 0 || shared > kMaxStaticShared || rope.dim > dim ||
      rope.dim % 2 != 0) {
    Fail("IndexerQueries: dim must be a power of two >= 32 (the Hadamard rotation, FP4 blocks)");
  }
  IndexerQueriesKernel<<<static_cast<unsigned>(rows * heads), kHeadThreads, shared, stream>>>(
      q, heads, dim, rope, positions);
  STRATA_CUDA_CHECK_LAUNCH("IndexerQueries");
}

void LaunchEncodeMainEntries(float* v, int64_t rows, const EntryFormat& f, uint8_t* out,
                             cudaStream_t stream) {
  if (rows <= 0) return;
  if (f.nope + f.nope / 64 + 2 * f.rope > f.main_bytes) Fail("EncodeMainEntries: entry too small");
  EncodeMainKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(v, f, out);
  STRATA_CUDA_CHECK_LAUNCH("EncodeMainEntries");
}

void LaunchAddApe(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
                  const int64_t* positions, cudaStream_t stream) {
  if (rows <= 0 || width <= 0) return;
  if (ratio <= 0) Fail("AddApe: ratio must be positive");
  AddApeKernel<<<ElementwiseBlocks(rows * width), kThreads, 0, stream>>>(z, rows, width, ape, ratio,
                                                                         positions);
  STRATA_CUDA_CHECK_LAUNCH("AddApe");
}

void LaunchRouteExperts(const Router& p, const float* logits, const int32_t* tokens, int64_t rows,
                        int32_t* ids, float* weights, cudaStream_t stream) {
  if (rows <= 0 || p.k <= 0) return;
  const int64_t shared = p.experts * 8 + p.k * 4 + p.experts;
  if (p.experts <= 0 || p.k > p.experts || shared > kMaxStaticShared - 512) {
    Fail("RouteExperts: unsupported expert count");
  }
  RouteKernel<<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(p, logits, tokens, ids,
                                                                         weights);
  STRATA_CUDA_CHECK_LAUNCH("RouteExperts");
}

void LaunchSwiGlu(const float* u, const float* v, int64_t rows, int64_t inter,
                  const float* row_weights, float limit, float* h, cudaStream_t stream) {
  if (rows <= 0 || inter <= 0) return;
  SwiGluKernel<<<ElementwiseBlocks(rows * inter), kThreads, 0, stream>>>(u, v, rows, inter,
                                                                         row_weights, limit, h);
  STRATA_CUDA_CHECK_LAUNCH("SwiGlu");
}

void LaunchGatherIndexed(const float* src, int64_t width, const int32_t* rows, int64_t n,
                         float* dst, cudaStream_t stream) {
  if (n <= 0 || width <= 0) return;
  GatherKernel<<<ElementwiseBlocks(n * width), kThreads, 0, stream>>>(src, width, rows, n, dst);
  STRATA_CUDA_CHECK_LAUNCH("GatherIndexed");
}

void LaunchSumExpertOutputs(const float* expert_out, const int32_t* slot, int64_t rows, int64_t k,
                            int64_t d, float* out, cudaStream_t stream) {
  if (rows <= 0 || d <= 0) return;
  SumExpertOutputsKernel<<<ElementwiseBlocks(rows * d), kThreads, 0, stream>>>(expert_out, slot,
                                                                               rows, k, d, out);
  STRATA_CUDA_CHECK_LAUNCH("SumExpertOutputs");
}

}  // namespace strata::engine::cuda
