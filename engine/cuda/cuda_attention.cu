// The attention side of a layer on the GPU (engine/cuda/kernels.h, "cuda_attention.cu"): the
// compressors, the lightning indexer's top-k, sparse attention with the sink and the window ring.
// Each kernel computes what engine/backend.h states, mirroring CpuBackend (cpu/cpu_attention.cc).
//
// Numerics. Every value the contract rounds (BF16, FP8, FP4) is produced by the same FP32
// operations as on the host, so results differ only where the math library might (exp, cos and
// sin are taken in FP64 and rounded once, cuda_common.cuh). To make that hold whatever
// nvcc's --fmad / --prec-div / --prec-sqrt settings, the element-wise formulas the host computes
// unfused (RoPE, the compressor's pooling, RMSNorm's scaling, the Hadamard butterfly, softmax)
// use the IEEE _rn intrinsics (exact, never contracted), while the sums the host computes in its
// vector kernels (cpu/vector_ops.cc: Dot, SumSquares, Axpy, IndexerScores — 16 interleaved
// partial sums, fused multiply-adds on x86-64-v3/v4) use fmaf in the same order. The host's
// baseline (non-FMA) build rounds those products separately; only then do the sums differ. So on
// an x86-64-v3+ host the indexer scores (no transcendental) and hence the top-k are bit-identical.
//
// Design (one line each; details at each kernel):
//   Compress       one block per planned (sequence, group) job; a second kernel stores the carry.
//   IndexerTopK    scores: one thread per entry (the FP4 key decoded into registers), a block per
//                  128 entries × 4 rows; select: one block per row, radix select on a 64-bit key
//                  (score, −j) then an ordered stream compaction (chosen in increasing j).
//   Attention      one block per (row, group of heads): keys staged 16 at a time into shared
//                  memory (decoded once for the group), logits in shared memory, one FP32
//                  accumulator per (head, dim) output summing the candidates in order.
//   StoreWindow    one block per (sequence, stored entry): a byte copy into the ring.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "engine/cuda/cuda_common.cuh"
#include "engine/cuda/kernels.h"

namespace strata::engine::cuda {
namespace {

constexpr int64_t kBlockTokens = 128;  // positions per KV block (engine/kv/kv_layout.h)
constexpr int64_t kMaxGridY = 65535;
constexpr int kDefaultSmem = 48 << 10;  // static + dynamic shared memory without the opt-in
// Room for the kernels' static shared memory (CompressKernel's is the largest, ~2.1 KiB): the 48
// KiB default and the opt-in maximum bound static + dynamic, not the dynamic bytes alone.
constexpr int kStaticSmemMargin = 4 << 10;

// A launcher given arguments it cannot honour is a bug in its caller: say so, then stop.
void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "cuda_attention: %s\n", what);
  std::abort();
}
void CheckCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  std::fprintf(stderr, "cuda_attention: %s failed: %s\n", what, cudaGetErrorString(err));
  std::abort();
}
int DeviceAttribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  CheckCuda(cudaGetDevice(&device), "cudaGetDevice");
  CheckCuda(cudaDeviceGetAttribute(&value, attr, device), "cudaDeviceGetAttribute");
  return value;
}
int MaxSharedBytes() {
  static const int bytes = DeviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  return bytes;
}
// Kernels whose static + dynamic shared memory may exceed the default 48 KiB must opt in.
template <typename Kernel>
void AllowSharedBytes(Kernel kernel, int64_t bytes) {
  Require(bytes + kStaticSmemMargin <= MaxSharedBytes(),
          "kernel needs more shared memory than the device has");
  if (bytes + kStaticSmemMargin > kDefaultSmem) {
    CheckCuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes)),
              "cudaFuncSetAttribute");
  }
}

// Entry j of a page whose block holds `per_block` entries of `bytes` each.
__device__ __forceinline__ int64_t PageEntryOffset(const int32_t* blocks, int64_t block_bytes,
                                                   int64_t page_offset, int64_t per_block,
                                                   int64_t bytes, int64_t j) {
  return static_cast<int64_t>(blocks[j / per_block]) * block_bytes + page_offset +
         (j % per_block) * bytes;
}

// Rotates the pair x[0], x[1] by `angle` with BF16 results — the host's RopeAngles::Apply, whose
// products and sums are separately rounded (no FMA in its baseline build). Not inlined: cos and
// sin of large angles (positions past ~10^5) take a slow path whose call made ptxas spill the
// caller's registers; out of line, the kernels keep theirs (it runs once per pair per block).
__device__ __noinline__ void RotatePair(float* x, float angle) {
  float c, s;
  CosSinF(angle, &c, &s);
  const float x0 = x[0], x1 = x[1];
  x[0] = RoundBf16(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
  x[1] = RoundBf16(__fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)));
}

// Value i of a main entry: E4M3 code × UE8M0 block scale, or the BF16 RoPE part (little endian).
// `e4m3` is the decode table of all 256 codes (E4M3ToFloat), in shared memory.
__device__ __forceinline__ float MainEntryValue(const uint8_t* entry, int i, int nope,
                                                const float* e4m3) {
  if (i < nope) return __fmul_rn(e4m3[entry[i]], Ue8m0ToFloat(entry[nope + i / 64]));
  const uint8_t* r = entry + nope + nope / 64 + 2 * (i - nope);
  return Bf16ToFloat(static_cast<uint16_t>(r[0] | (r[1] << 8)));
}

// ---- Compress ---------------------------------------------------------------------------------

constexpr int kCompressThreads = 256;
constexpr int kMaxCompressCandidates = 128;  // 2·4 (CSA) or 128 (HCA) rows pooled per entry
static_assert(kMaxCompressCandidates <= kCompressThreads, "one thread per candidate row");

// One block per job (sequence, group g). x (dynamic shared memory, out floats) holds the entry
// vector through pooling, RMSNorm, RoPE and (indexer) the Hadamard rotation, then it is encoded.
__global__ void __launch_bounds__(kCompressThreads)
    CompressKernel(const Seq* seqs, const CompressJob* jobs, Compressor p, EntryFormat f, int out,
                   const float* a, const float* z, uint8_t* pool, int64_t block_bytes) {
  extern __shared__ float x[];
  __shared__ const float* a_rows[kMaxCompressCandidates];  // candidate i's a (z) values,
  __shared__ const float* z_rows[kMaxCompressCandidates];  // channel offset applied
  __shared__ float partial[16];
  __shared__ float inv_rms;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  const CompressJob job = jobs[blockIdx.x];
  const Seq s = seqs[job.seq];
  const int64_t g = job.group, m = p.ratio, width = p.width;
  // Candidates in order: (CSA, g > 0) group g−1's positions, channels [0, out); then group g's,
  // channels [out, 2·out) for CSA, [0, out) for HCA. Rows of positions before the step come from
  // the carry ring, which the carry kernel rewrites only after every job has run.
  const int64_t first = (m == 4 && g > 0) ? (g - 1) * m : g * m;
  const int count = static_cast<int>((g + 1) * m - first);
  if (tid < count) {
    const int64_t pos = first + tid;
    const int64_t channel = (m == 4 && pos >= g * m) ? out : 0;
    const float* ring = reinterpret_cast<const float*>(s.state + p.carry_offset);
    const float* a_row = pos >= s.start ? a + (s.row + pos - s.start) * width
                                        : ring + (pos % p.carry_rows) * 2 * width;
    const float* z_row = pos >= s.start ? z + (s.row + pos - s.start) * width : a_row + width;
    a_rows[tid] = a_row + channel;
    z_rows[tid] = z_row + channel;
  }
  __syncthreads();
  for (int ch = tid; ch < out; ch += blockDim.x) {
    float mx = -INFINITY;
    for (int i = 0; i < count; ++i) mx = fmaxf(mx, z_rows[i][ch]);
    float sum = 0.0f;
    for (int i = 0; i < count; ++i) sum = __fadd_rn(sum, ExpF(__fsub_rn(z_rows[i][ch], mx)));
    // e_i is recomputed rather than stored: expf is deterministic, so it is the same value.
    float acc = 0.0f;
    for (int i = 0; i < count; ++i) {
      const float e = ExpF(__fsub_rn(z_rows[i][ch], mx));
      acc = __fadd_rn(acc, __fmul_rn(__fdiv_rn(e, sum), a_rows[i][ch]));
    }
    x[ch] = RoundBf16(acc);
  }
  __syncthreads();
  // RMSNorm: Σu² as the host's SumSquares (16 interleaved FMA chains, then summed in order).
  if (tid < 16) {
    float acc = 0.0f;
    for (int i = tid; i < out; i += 16) acc = fmaf(x[i], x[i], acc);
    partial[tid] = acc;
  }
  __syncthreads();
  if (tid == 0) {
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum = __fadd_rn(sum, partial[l]);
    const float mean = __fdiv_rn(sum, static_cast<float>(out));
    inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, p.norm_eps)));
  }
  __syncthreads();
  for (int ch = tid; ch < out; ch += blockDim.x) {
    x[ch] = RoundBf16(__fmul_rn(__fmul_rn(x[ch], inv_rms), p.norm[ch]));
  }
  __syncthreads();
  const float t = static_cast<float>(g * m);
  for (int j = tid; j < p.rope.dim / 2; j += blockDim.x) {
    RotatePair(x + out - p.rope.dim + 2 * j, __fmul_rn(t, p.rope.freqs[j]));
  }
  __syncthreads();
  const int64_t per_block = kBlockTokens / m;
  const int64_t entry_bytes = p.indexer ? f.index_bytes : f.main_bytes;
  uint8_t* dst =
      pool + PageEntryOffset(s.blocks, block_bytes, p.entry_offset, per_block, entry_bytes, g);
  if (p.indexer) {
    // The Walsh–Hadamard butterfly, stage by stage (each stage's pairs are disjoint).
    for (int h = 1; h < out; h *= 2) {
      for (int i = tid; i < out / 2; i += blockDim.x) {
        const int j = (i / h) * 2 * h + i % h;
        const float u = x[j], v = x[j + h];
        x[j] = __fadd_rn(u, v);
        x[j + h] = __fsub_rn(u, v);
      }
      __syncthreads();
    }
    const float scale = __fdiv_rn(1.0f, __fsqrt_rn(static_cast<float>(out)));
    for (int i = tid; i < out; i += blockDim.x) x[i] = RoundBf16(__fmul_rn(x[i], scale));
    __syncthreads();
    // FP4 blocks of 32, one warp each; the odd element's code comes from the next lane.
    for (int b = warp; b < out / 32; b += warps) {
      const float v = x[b * 32 + lane];
      const float amax = WarpMax(fabsf(v));
      const int e = PowerOfTwoScaleExponent(amax, 6.0f, Fp4AmaxFloor());
      const uint8_t code = FloatToE2M1(__fmul_rn(v, ldexpf(1.0f, -e)));
      const uint8_t high = static_cast<uint8_t>(__shfl_down_sync(0xFFFFFFFFu, code, 1));
      if ((lane & 1) == 0) dst[(b * 32 + lane) / 2] = static_cast<uint8_t>(code | (high << 4));
      if (lane == 0) dst[out / 2 + b] = static_cast<uint8_t>(e + 127);
    }
    for (int64_t i = out / 2 + out / 32 + tid; i < f.index_bytes; i += blockDim.x) dst[i] = 0;
    return;
  }
  // Main entry: FP8 blocks of 64, one warp each (two values per lane); BF16 RoPE part; zero pad.
  const int nope = static_cast<int>(f.nope);
  for (int b = warp; b < nope / 64; b += warps) {
    const float v0 = x[b * 64 + lane], v1 = x[b * 64 + 32 + lane];
    const float amax = WarpMax(fmaxf(fabsf(v0), fabsf(v1)));
    const int e = PowerOfTwoScaleExponent(amax, 448.0f, kFp8AmaxFloor);
    const float inv = ldexpf(1.0f, -e);
    dst[b * 64 + lane] = FloatToE4M3(__fmul_rn(v0, inv));
    dst[b * 64 + 32 + lane] = FloatToE4M3(__fmul_rn(v1, inv));
    if (lane == 0) dst[nope + b] = static_cast<uint8_t>(e + 127);
  }
  uint8_t* rope_bytes = dst + nope + nope / 64;
  for (int i = tid; i < f.rope; i += blockDim.x) {
    const uint16_t bits = FloatToBf16Bits(x[nope + i]);
    rope_bytes[2 * i] = static_cast<uint8_t>(bits & 0xFF);
    rope_bytes[2 * i + 1] = static_cast<uint8_t>(bits >> 8);
  }
  for (int64_t i = nope + nope / 64 + 2 * f.rope + tid; i < f.main_bytes; i += blockDim.x)
    dst[i] = 0;
}

// Block (sequence, r): the r-th of the sequence's last min(n, carry_rows) new rows into the ring.
__global__ void StoreCarryKernel(const Seq* seqs, Compressor p, const float* a, const float* z) {
  const Seq s = seqs[blockIdx.x];
  const int64_t end = s.start + s.n;
  const int64_t pos = max(s.start, end - p.carry_rows) + blockIdx.y;
  if (pos >= end) return;
  const int64_t row = s.row + pos - s.start, width = p.width;
  float* dst =
      reinterpret_cast<float*>(s.state + p.carry_offset) + (pos % p.carry_rows) * 2 * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    dst[i] = a[row * width + i];
    dst[width + i] = z[row * width + i];
  }
}

// ---- IndexerTopK: scores ----------------------------------------------------------------------

constexpr int kScoreThreads = 128;  // entries per block, one per thread
constexpr int kScoreRows = 4;       // rows per block (the decoded keys are reused across them)

// Block (row chunk, entry tile); thread = entry j. Its key lives in registers (kDim floats, hence
// the template) and every row's q (heads × kDim) in shared memory, read as broadcast float4s.
// score = Σ_h w_h·ReLU(q_h·k) with each dot the host's IndexerScores order: 16 interleaved FMA
// chains summed in order, then score = fma(w_h, max(dot, 0), score), heads in order.
template <int kDim>
__global__ void __launch_bounds__(kScoreThreads)
    IndexerScoreKernel(int64_t pos0, int64_t row0, int rows, int64_t max_visible,
                       const int32_t* blocks, Indexer p, int64_t index_bytes, const float* q,
                       const float* w, const uint8_t* pool, int64_t block_bytes, float* scores) {
  extern __shared__ float4 score_smem[];
  __shared__ float e2m1[16];
  float* q_s = reinterpret_cast<float*>(score_smem);
  const int heads = static_cast<int>(p.heads);
  float* w_s = q_s + heads * kDim;
  const int tid = threadIdx.x;
  if (tid < 16) e2m1[tid] = E2M1ToFloat(static_cast<uint8_t>(tid));
  __syncthreads();
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kScoreThreads, j = tile0 + tid;
  float k[kDim];
  if (j < max_visible) {
    const uint8_t* entry = pool + PageEntryOffset(blocks, block_bytes, p.entry_offset,
                                                  kBlockTokens / 4, index_bytes, j);
#pragma unroll
    for (int b = 0; b < kDim / 32; ++b) {
      const float scale = Ue8m0ToFloat(entry[kDim / 2 + b]);
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const uint8_t byte = entry[b * 16 + i];
        k[b * 32 + 2 * i] = __fmul_rn(e2m1[byte & 0xF], scale);
        k[b * 32 + 2 * i + 1] = __fmul_rn(e2m1[byte >> 4], scale);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kDim; ++i) k[i] = 0.0f;
  }
  for (int r = 0; r < kScoreRows; ++r) {
    const int local = static_cast<int>(blockIdx.x) * kScoreRows + r;
    if (local >= rows) break;  // uniform over the block
    const int64_t visible = (pos0 + local + 1) / 4;
    if (tile0 >= visible) continue;  // uniform over the block
    __syncthreads();                 // the previous row's q is no longer read
    const float* q_row = q + (row0 + local) * heads * kDim;
    for (int i = tid; i < heads * kDim; i += kScoreThreads) q_s[i] = q_row[i];
    for (int i = tid; i < heads; i += kScoreThreads) w_s[i] = w[(row0 + local) * heads + i];
    __syncthreads();
    if (j >= visible) continue;
    float score = 0.0f;
    for (int h = 0; h < heads; ++h) {
      const float4* qh = reinterpret_cast<const float4*>(q_s + h * kDim);
      float part[16];
#pragma unroll
      for (int l = 0; l < 16; ++l) part[l] = 0.0f;
#pragma unroll
      for (int c = 0; c < kDim / 16; ++c) {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          const float4 qv = qh[c * 4 + v];
          const int i = c * 16 + v * 4;
          part[v * 4] = fmaf(qv.x, k[i], part[v * 4]);
          part[v * 4 + 1] = fmaf(qv.y, k[i + 1], part[v * 4 + 1]);
          part[v * 4 + 2] = fmaf(qv.z, k[i + 2], part[v * 4 + 2]);
          part[v * 4 + 3] = fmaf(qv.w, k[i + 3], part[v * 4 + 3]);
        }
      }
      float dot = 0.0f;
#pragma unroll
      for (int l = 0; l < 16; ++l) dot = __fadd_rn(dot, part[l]);
      score = fmaf(w_s[h], dot < 0.0f ? 0.0f : dot, score);  // std::max(dot, 0.0f)
    }
    scores[local * max_visible + j] = score;
  }
}

// ---- IndexerTopK: selection -------------------------------------------------------------------

constexpr int kSelectThreads = 512;

// The selection order as one unsigned key, larger = chosen first: the score (−0 made +0, so the
// two zeros tie as they compare equal on the host), then the lower j. Distinct for distinct j.
__device__ __forceinline__ uint64_t SelectKey(const float* scores, int64_t j) {
  const float f = scores[j];
  uint32_t u = f == 0.0f ? 0u : __float_as_uint(f);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // order-preserving for non-NaN floats
  return (static_cast<uint64_t>(u) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(j));
}

// One block per row. visible ≤ topk: every entry. Otherwise an MSB-first radix select (8-bit
// digits) finds a threshold key T with exactly k keys ≥ T, then a block-wide stream compaction
// writes the selected j in increasing order.
__global__ void __launch_bounds__(kSelectThreads)
    IndexerSelectKernel(int64_t pos0, int64_t row0, int64_t max_visible, int64_t topk,
                        const float* scores, int32_t* chosen, int32_t* count) {
  __shared__ unsigned hist[256];
  __shared__ uint64_t s_prefix;
  __shared__ int64_t s_remaining;
  __shared__ int s_done;
  __shared__ int warp_count[kSelectThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int local = blockIdx.x;
  const int64_t row = row0 + local, visible = (pos0 + local + 1) / 4;
  const int64_t k = min(topk, visible);
  int32_t* out = chosen + row * topk;
  if (tid == 0) count[row] = static_cast<int32_t>(k);
  if (visible <= topk) {
    for (int64_t j = tid; j < visible; j += kSelectThreads) out[j] = static_cast<int32_t>(j);
    return;
  }
  const float* sc = scores + local * max_visible;
  // Invariant: the keys above `prefix` in the decided (top) bits are all chosen, k − remaining of
  // them, and at least `remaining` keys match `prefix` there. When a digit's whole bucket is
  // needed (always so at the last digit, keys being distinct), T = prefix, lower bits zero.
  uint64_t prefix = 0, mask = 0;
  int64_t remaining = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kSelectThreads) hist[i] = 0;
    __syncthreads();
    for (int64_t base = 0; base < visible; base += kSelectThreads) {  // uniform trip count
      const int64_t j = base + tid;
      unsigned digit = 256;  // not counted
      if (j < visible) {
        const uint64_t key = SelectKey(sc, j);
        if ((key & mask) == prefix) digit = static_cast<unsigned>(key >> shift) & 0xFFu;
      }
      // Lanes with the same digit add once (the top digits of scores are often all equal).
      const unsigned peers = __match_any_sync(0xFFFFFFFFu, digit);
      if (digit < 256 && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
    }
    __syncthreads();
    if (tid == 0) {
      int64_t above = 0;
      int d = 255;
      while (d > 0 && above + hist[d] < remaining) above += hist[d--];
      s_prefix = prefix | (static_cast<uint64_t>(d) << shift);
      s_remaining = remaining - above;
      s_done = hist[d] == static_cast<uint64_t>(remaining - above);
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= uint64_t{0xFF} << shift;
    const bool done = s_done;
    __syncthreads();  // everyone has read s_* and hist before the next pass rewrites them
    if (done) break;
  }
  const uint64_t threshold = prefix;
  int64_t written = 0;
  for (int64_t base = 0; base < visible; base += kSelectThreads) {
    const int64_t j = base + tid;
    const bool take = j < visible && SelectKey(sc, j) >= threshold;
    const unsigned ballot = __ballot_sync(0xFFFFFFFFu, take);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kSelectThreads / 32; ++w) {
      if (w < warp) before += warp_count[w];
      total += warp_count[w];
    }
    if (take) {
      const int64_t idx = written + before + __popc(ballot & ((1u << lane) - 1u));
      if (idx < k) out[idx] = static_cast<int32_t>(j);
    }
    written += total;
    __syncthreads();  // warp_count is rewritten next round
  }
  if (tid == 0 && written != k) __trap();  // impossible by the invariant above
}

// ---- Attention ----------------------------------------------------------------------------------

constexpr int kAttnThreads = 256;
constexpr int kAttnTile = 16;     // candidates staged per pass: one per half-warp
constexpr int kAttnMaxGroup = 8;  // heads per block (one softmax warp each)
constexpr int kAttnMaxOut = 16;   // (head, dim) outputs per thread: group·head_dim ≤ 16·256
constexpr int kAttnLut = 256;     // E4M3 decode table
static_assert(kAttnThreads == kAttnLut, "one thread fills each E4M3 table entry");
static_assert(kAttnMaxGroup <= kAttnThreads / 32, "one softmax warp per head");
static_assert(kAttnTile <= kAttnThreads && kAttnTile == kAttnThreads / 16,
              "the logit pass gives each half-warp one candidate of a tile per head");

int64_t AttentionSmemFloats(int64_t group, int64_t hd, int64_t max_candidates) {
  return kAttnLut + group * hd + kAttnTile * (hd + 16) + group * max_candidates;
}

struct AttnRow {  // what a block knows about its row
  Seq s;
  int64_t t, pos, win_first;
  int n_win, n;
};

// Stages candidates c0 … c0+15 (zeros past n) as floats into keys[c·ks + i], ks = hd + 16 (the
// padding puts the two half-warps' rows of the logit pass in different banks).
__device__ void StageKeys(const AttnRow& r, int c0, const Attention& p, const EntryFormat& f,
                          const float* kv, const int32_t* chosen, const uint8_t* pool,
                          int64_t block_bytes, const float* e4m3, float* keys, const uint8_t** src,
                          int* src_float) {
  const int tid = threadIdx.x, hd = static_cast<int>(p.head_dim), ks = hd + 16;
  __syncthreads();  // the previous tile is no longer read
  if (tid < kAttnTile && c0 + tid < r.n) {
    const int c = c0 + tid;
    if (c < r.n_win) {  // the window, oldest first: the step's kv rows, earlier ones the ring
      const int64_t u = r.win_first + c;
      src_float[tid] = u >= r.s.start;
      src[tid] = u >= r.s.start
                     ? reinterpret_cast<const uint8_t*>(kv + (r.s.row + u - r.s.start) * hd)
                     : r.s.state + p.window_offset + (u % p.window) * f.main_bytes;
    } else {  // compressed entries: CSA the chosen ones in order, HCA every visible one
      const int64_t j = p.ratio == 4 ? chosen[r.t * p.topk + (c - r.n_win)] : c - r.n_win;
      src_float[tid] = 0;
      src[tid] = pool + PageEntryOffset(r.s.blocks, block_bytes, p.entry_offset,
                                        kBlockTokens / p.ratio, f.main_bytes, j);
    }
  }
  __syncthreads();
  // Thread → (candidate c ≡ tid / hd, element tid % hd) when hd < threads, else elements.
  const int cstep = max(1, kAttnThreads / hd), istep = min(hd, kAttnThreads);
  const int nope = static_cast<int>(f.nope);
  for (int c = tid / hd; c < kAttnTile && tid / hd < cstep; c += cstep) {
    const bool live = c0 + c < r.n;
    const uint8_t* e = src[c];
    const bool is_float = live && src_float[c];
    for (int i = tid % hd; i < hd; i += istep) {
      keys[c * ks + i] = !live      ? 0.0f
                         : is_float ? reinterpret_cast<const float*>(e)[i]
                                    : MainEntryValue(e, i, nope, e4m3);
    }
  }
  __syncthreads();
}

// Block (row t, heads h0 … h0+group−1). Pass 1 stages the candidates and writes every logit to
// shared memory; then warp g does head g's softmax (the sequential denominator in candidate order,
// as the host); pass 2 stages the candidates again and each thread accumulates its outputs over
// them in order with the host's Axpy arithmetic (fma(p_j, k_j, acc)); then BF16, inverse RoPE.
__global__ void __launch_bounds__(kAttnThreads)
    AttentionKernel(const Seq* seqs, const int32_t* seq_of_row, const int64_t* positions,
                    int64_t max_candidates, int group, Attention p, EntryFormat f, const float* q,
                    const float* kv, const int32_t* chosen, const int32_t* count,
                    const uint8_t* pool, int64_t block_bytes, float* o) {
  extern __shared__ float attn_smem[];
  __shared__ const uint8_t* src[kAttnTile];
  __shared__ int src_float[kAttnTile];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int hd = static_cast<int>(p.head_dim), ks = hd + 16;
  const int64_t h0 = static_cast<int64_t>(blockIdx.y) * group;
  float* e4m3 = attn_smem;
  float* q_s = e4m3 + kAttnLut;           // [group][hd]
  float* keys = q_s + group * hd;         // [kAttnTile][ks]; at the end the output
  float* logits = keys + kAttnTile * ks;  // [group][max_candidates]: logits, then weights

  AttnRow r;
  r.t = blockIdx.x;
  r.s = seqs[seq_of_row[r.t]];
  r.pos = positions[r.t];
  r.win_first = max(int64_t{0}, r.pos - p.window + 1);
  r.n_win = static_cast<int>(r.pos - r.win_first + 1);
  int64_t n_comp = 0;
  if (p.ratio == 4) n_comp = count[r.t];
  if (p.ratio == 128) n_comp = (r.pos + 1) / 128;
  if (r.n_win + n_comp > max_candidates) __trap();  // the launcher's bound is wrong
  r.n = static_cast<int>(r.n_win + n_comp);

  e4m3[tid] = E4M3ToFloat(static_cast<uint8_t>(tid));  // kAttnThreads == kAttnLut
  for (int i = tid; i < group * hd; i += kAttnThreads) q_s[i] = q[(r.t * p.heads + h0) * hd + i];

  // Pass 1: logits. Task (c, g) → half-warp; lane l sums i ≡ l (mod 16) as one FMA chain, then
  // the 16 partials are added in order: the host's Dot. The two half-warps of a warp take
  // consecutive candidates of the same head (q reads broadcast).
  const float scale = __fdiv_rn(1.0f, __fsqrt_rn(static_cast<float>(hd)));
  const int half = tid >> 4, l = tid & 15;
  for (int c0 = 0; c0 < r.n; c0 += kAttnTile) {
    StageKeys(r, c0, p, f, kv, chosen, pool, block_bytes, e4m3, keys, src, src_float);
    for (int task = half; task < kAttnTile * group; task += kAttnThreads / 16) {
      const int c = task % kAttnTile, g = task / kAttnTile;
      const float* qg = q_s + g * hd;
      const float* kc = keys + c * ks;
      float part = 0.0f;
      for (int i = l; i < hd; i += 16) part = fmaf(qg[i], kc[i], part);
      float dot = 0.0f;
      for (int m = 0; m < 16; ++m)
        dot = __fadd_rn(dot, __shfl_sync(0xFFFFFFFFu, part, (lane & 16) | m));
      if (l == 0 && c0 + c < r.n) logits[g * max_candidates + c0 + c] = __fmul_rn(dot, scale);
    }
  }
  __syncthreads();

  // Softmax with the sink, warp g for head g: m = max(sink, logits), e_j = exp(logit_j − m),
  // D = exp(sink − m) + Σ e_j summed in candidate order by one lane, weights e_j / D.
  if (warp < group) {
    float* lg = logits + warp * max_candidates;
    const float sink = p.sink[h0 + warp];
    float mx = -INFINITY;
    for (int j = lane; j < r.n; j += 32) mx = fmaxf(mx, lg[j]);
    mx = fmaxf(WarpMax(mx), sink);
    for (int j = lane; j < r.n; j += 32) lg[j] = ExpF(__fsub_rn(lg[j], mx));
    __syncwarp();
    float denom = 0.0f;
    if (lane == 0) {
      denom = ExpF(__fsub_rn(sink, mx));
      for (int j = 0; j < r.n; ++j) denom = __fadd_rn(denom, lg[j]);
    }
    denom = __shfl_sync(0xFFFFFFFFu, denom, 0);
    for (int j = lane; j < r.n; j += 32) lg[j] = __fdiv_rn(lg[j], denom);
  }
  __syncthreads();

  // Pass 2: output o = a·kThreads + tid is (head o / hd, dim o % hd); acc = fma(p_j, k_j, acc)
  // over the candidates in order, from +0 like the host's zero-filled output.
  const int outs = group * hd;
  float acc[kAttnMaxOut];
  int p_off[kAttnMaxOut], k_off[kAttnMaxOut];
#pragma unroll
  for (int a = 0; a < kAttnMaxOut; ++a) {
    const int o_idx = tid + a * kAttnThreads, g = o_idx / hd;
    acc[a] = 0.0f;
    p_off[a] = g * static_cast<int>(max_candidates);
    k_off[a] = o_idx - g * hd;
  }
  for (int c0 = 0; c0 < r.n; c0 += kAttnTile) {
    StageKeys(r, c0, p, f, kv, chosen, pool, block_bytes, e4m3, keys, src, src_float);
    const int tile_n = min(kAttnTile, r.n - c0);
    for (int c = 0; c < tile_n; ++c) {
#pragma unroll
      for (int a = 0; a < kAttnMaxOut; ++a) {
        if (tid + a * kAttnThreads < outs) {
          acc[a] = fmaf(logits[p_off[a] + c0 + c], keys[c * ks + k_off[a]], acc[a]);
        }
      }
    }
  }
  __syncthreads();      // the keys are no longer read: they become the output
  float* out_s = keys;  // [group][hd]
#pragma unroll
  for (int a = 0; a < kAttnMaxOut; ++a) {
    if (tid + a * kAttnThreads < outs) out_s[tid + a * kAttnThreads] = RoundBf16(acc[a]);
  }
  __syncthreads();
  // Inverse RoPE at the row's position on each head's last rope.dim values.
  const int pairs = static_cast<int>(p.rope.dim / 2);
  const float t = static_cast<float>(r.pos);
  for (int i = tid; i < group * pairs; i += kAttnThreads) {
    const int g = i / pairs, j = i % pairs;
    RotatePair(out_s + g * hd + hd - p.rope.dim + 2 * j, -__fmul_rn(t, p.rope.freqs[j]));
  }
  __syncthreads();
  for (int i = tid; i < outs; i += kAttnThreads) o[(r.t * p.heads + h0) * hd + i] = out_s[i];
}

// ---- StoreWindow --------------------------------------------------------------------------------

// Block (sequence, r): the r-th of the sequence's last min(n, window) new entries into its slot.
__global__ void StoreWindowKernel(const Seq* seqs, int64_t main_bytes, int64_t window,
                                  int64_t window_offset, const uint8_t* entries) {
  const Seq s = seqs[blockIdx.x];
  const int64_t i = max(int64_t{0}, s.n - window) + blockIdx.y;
  if (i >= s.n) return;
  uint8_t* dst = s.state + window_offset + ((s.start + i) % window) * main_bytes;
  const uint8_t* src = entries + (s.row + i) * main_bytes;
  for (int64_t b = threadIdx.x; b < main_bytes; b += blockDim.x) dst[b] = src[b];
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------

void LaunchCompress(const Seq* seqs, const Seq* host_seqs, int64_t num_seqs,
                    const CompressJob* jobs, int64_t num_jobs, const Compressor& p,
                    const EntryFormat& f, const float* a, const float* z, uint8_t* pool,
                    int64_t block_bytes, cudaStream_t stream) {
  if (num_seqs <= 0) return;
  Require(p.ratio == 4 || p.ratio == 128, "Compress: ratio must be 4 or 128");
  Require(p.carry_rows > 0, "Compress: carry_rows must be positive");
  const int64_t out = p.ratio == 4 ? p.width / 2 : p.width;
  Require(p.rope.dim % 2 == 0 && p.rope.dim <= out, "Compress: bad RoPE width");
  if (p.indexer) {
    Require(out == f.index_dim && out % 32 == 0 && (out & (out - 1)) == 0,
            "Compress: indexer entries need out == index_dim, a power of two >= 32");
  } else {
    Require(out == f.nope + f.rope && f.nope % 64 == 0, "Compress: out must be nope + rope");
  }
  if (num_jobs > 0) {
    const int64_t smem = out * static_cast<int64_t>(sizeof(float));
    AllowSharedBytes(CompressKernel, smem);
    CompressKernel<<<static_cast<unsigned>(num_jobs), kCompressThreads, smem, stream>>>(
        seqs, jobs, p, f, static_cast<int>(out), a, z, pool, block_bytes);
    STRATA_CUDA_CHECK_LAUNCH("Compress");
  }
  // After every job (same stream): the carry ring gets each sequence's last carry_rows rows.
  int64_t max_rows = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    max_rows = std::max(max_rows, std::min(host_seqs[i].n, p.carry_rows));
  }
  if (max_rows == 0) return;
  StoreCarryKernel<<<dim3(static_cast<unsigned>(num_seqs), static_cast<unsigned>(max_rows)),
                     kCompressThreads, 0, stream>>>(seqs, p, a, z);
  STRATA_CUDA_CHECK_LAUNCH("Compress carry");
}

// `seq` and `positions` are not needed: the rows of a sequence are at positions start … start+n−1
// (StepSequence), and host_seq has every value the kernels take (its blocks are device memory).
void LaunchIndexerTopK(const Seq& host_seq, const Seq* /*seq*/, const int64_t* /*positions*/,
                       const Indexer& p, const EntryFormat& f, const float* q, const float* w,
                       const uint8_t* pool, int64_t block_bytes, int32_t* chosen, int32_t* count,
                       float* scores, int64_t scratch_floats, cudaStream_t stream) {
  const int64_t n = host_seq.n;
  if (n <= 0) return;
  Require(p.topk > 0, "IndexerTopK: topk must be positive");
  Require(p.dim == f.index_dim && (p.dim == 64 || p.dim == 128),
          "IndexerTopK: index_dim must be 64 or 128 (the key is held in registers)");
  const int64_t max_visible = (host_seq.start + n) / 4;
  int64_t tile = n;
  if (max_visible > 0) {
    Require(scratch_floats >= max_visible, "IndexerTopK: scratch below one row of scores");
    tile = std::min(n, scratch_floats / max_visible);
    Require((max_visible + kScoreThreads - 1) / kScoreThreads <= kMaxGridY,
            "IndexerTopK: too many entries");
  }
  const int64_t smem = p.heads * (p.dim + 1) * static_cast<int64_t>(sizeof(float));
  auto score_kernel = p.dim == 64 ? IndexerScoreKernel<64> : IndexerScoreKernel<128>;
  if (max_visible > 0) AllowSharedBytes(score_kernel, smem);
  for (int64_t first = 0; first < n; first += tile) {
    const int64_t rows = std::min(tile, n - first);
    const int64_t pos0 = host_seq.start + first, row0 = host_seq.row + first;
    const int64_t tile_visible = (pos0 + rows) / 4;  // the tile's last row sees the most
    if (tile_visible > 0) {
      const dim3 grid(Blocks(rows, kScoreRows), Blocks(tile_visible, kScoreThreads));
      score_kernel<<<grid, kScoreThreads, smem, stream>>>(
          pos0, row0, static_cast<int>(rows), max_visible, host_seq.blocks, p, f.index_bytes, q, w,
          pool, block_bytes, scores);
      STRATA_CUDA_CHECK_LAUNCH("IndexerTopK scores");
    }
    IndexerSelectKernel<<<static_cast<unsigned>(rows), kSelectThreads, 0, stream>>>(
        pos0, row0, max_visible, p.topk, scores, chosen, count);
    STRATA_CUDA_CHECK_LAUNCH("IndexerTopK select");
  }
}

void LaunchAttention(const Seq* seqs, const int32_t* seq_of_row, const int64_t* positions,
                     int64_t rows, int64_t max_candidates, const Attention& p, const EntryFormat& f,
                     const float* q, const float* kv, const int32_t* chosen, const int32_t* count,
                     const uint8_t* pool, int64_t block_bytes, float* o, cudaStream_t stream) {
  if (rows <= 0) return;
  const int64_t hd = p.head_dim;
  Require(p.ratio == 0 || p.ratio == 4 || p.ratio == 128, "Attention: ratio must be 0, 4 or 128");
  Require(hd == f.nope + f.rope && f.nope % 64 == 0, "Attention: head_dim must be nope + rope");
  Require(p.rope.dim % 2 == 0 && p.rope.dim <= hd, "Attention: bad RoPE width");
  Require(p.window > 0 && max_candidates > 0 && p.heads > 0, "Attention: empty window or heads");
  Require(hd <= kAttnMaxOut * kAttnThreads, "Attention: head_dim too large");
  static const int sms = DeviceAttribute(cudaDevAttrMultiProcessorCount);
  const int64_t max_smem = MaxSharedBytes();
  auto smem = [&](int64_t g) {
    return AttentionSmemFloats(g, hd, max_candidates) * static_cast<int64_t>(sizeof(float));
  };
  // Heads per block: more share each staged key (less decoding), fewer keep every SM busy; the
  // result is the same either way (each head's sums do not depend on the group).
  int group = kAttnMaxGroup;
  while (group > 1 &&
         (p.heads % group != 0 || group * hd > kAttnMaxOut * kAttnThreads ||
          smem(group) + kStaticSmemMargin > max_smem || rows * p.heads / group < 2 * sms)) {
    group /= 2;
  }
  Require(p.heads / group <= kMaxGridY, "Attention: too many heads");
  AllowSharedBytes(AttentionKernel, smem(group));
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(p.heads / group));
  AttentionKernel<<<grid, kAttnThreads, smem(group), stream>>>(seqs, seq_of_row, positions,
                                                               max_candidates, group, p, f, q, kv,
                                                               chosen, count, pool, block_bytes, o);
  STRATA_CUDA_CHECK_LAUNCH("Attention");
}

void LaunchStoreWindow(const Seq* host_seqs, const Seq* seqs, int64_t num_seqs,
                       const EntryFormat& f, int64_t window, int64_t window_offset,
                       const uint8_t* entries, cudaStream_t stream) {
  if (num_seqs <= 0 || window <= 0) return;
  int64_t max_rows = 0;
  for (int64_t i = 0; i < num_seqs; ++i)
    max_rows = std::max(max_rows, std::min(host_seqs[i].n, window));
  if (max_rows == 0) return;
  StoreWindowKernel<<<dim3(static_cast<unsigned>(num_seqs), static_cast<unsigned>(max_rows)), 128,
                      0, stream>>>(seqs, f.main_bytes, window, window_offset, entries);
  STRATA_CUDA_CHECK_LAUNCH("StoreWindow");
}

}  // namespace strata::engine::cuda
