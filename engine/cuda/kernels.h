// Internal to engine/cuda/: the kernel launchers CudaBackend (cuda_backend.cc) calls, one per op
// of engine::Backend (engine/backend.h states what each op computes; these compute the same).
// Plain C++ types only, so this header is shared by nvcc (the .cu files) and the host compiler.
// Every pointer is device memory unless its comment says "host"; every launcher enqueues on
// `stream` and returns at once (no synchronisation), except where it says otherwise.
//
// Files: cuda_linear.cu (activation quantization, linears), cuda_ops.cu (dense ops, mHC, RoPE,
// query/KV entry preparation, MoE helpers), cuda_attention.cu (compressors, indexer top-k, sparse
// attention, window ring).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace strata::engine::cuda {

// Mirrors of engine/backend.h's structs, byte for byte (cuda_backend.cc static_asserts it).
struct Seq {  // StepSequence
  int64_t start, n, row;
  uint8_t* state;
  const int32_t* blocks;
};
struct Rope {  // RopeTable
  const float* freqs;
  int64_t dim;
};
struct EntryFormat {  // KvEntryFormat
  int64_t nope, rope, main_bytes, index_dim, index_bytes;
};

enum WeightKind : int32_t {
  kBf16 = 0,
  kF32 = 1,
  kFp8 = 2,
  kFp4 = 3
};  // engine::WeightFormat order
struct Weight {
  int32_t kind;
  const void* data;
  const uint8_t* scale;
  int64_t rows, cols;
};

// ---- cuda_linear.cu ---------------------------------------------------------------------------

// Scratch the FP8/FP4 linears need for n activation rows of `cols` values: quantized values
// (floats holding E4M3 values) and one power-of-two scale per 128-block.
inline int64_t LinearScratchFloats(int64_t n, int64_t cols) {
  return n * cols + n * ((cols + 127) / 128);
}

// y[i·ldy + y_offset + r] = Σ_k W[r, k] · x[i·ldx + x_offset + k] for i < n, r < w.rows (FP32
// sums). For kFp8/kFp4, x is first quantized per 128-block (MODEL.md §2) into `scratch`
// (LinearScratchFloats(n, w.cols) floats). Each output's summation order is fixed by (r, k) alone,
// never by n, so results do not depend on the batch.
void LaunchLinear(const Weight& w, const float* x, int64_t ldx, int64_t x_offset, int64_t n,
                  float* y, int64_t ldy, int64_t y_offset, float* scratch, cudaStream_t stream);

// ---- cuda_ops.cu ------------------------------------------------------------------------------

void LaunchEmbed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n, int64_t copies,
                 float* out, cudaStream_t stream);
void LaunchRmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out,
                   cudaStream_t stream);
void LaunchRoundBf16(float* x, int64_t n, cudaStream_t stream);
void LaunchScaleBf16(float* x, int64_t n, float factor, cudaStream_t stream);
void LaunchAddBf16(const float* a, const float* b, int64_t n, float* out, cudaStream_t stream);
void LaunchGatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n, float* dst,
                      cudaStream_t stream);
void LaunchZero(void* dst, int64_t bytes, cudaStream_t stream);

// mHC. `mu` [rows, mix] is W_fn·x̂ (a LaunchLinear with F32 weights, done by the caller); HcPre
// turns it into the mixes in place (mix == mu allowed) and writes x_out; HcHead reads mu.
struct Hc {
  const float* base;
  const float* scale;
  int64_t hc, d, mix, sinkhorn_iters;
  float hc_eps, norm_eps;
};
void LaunchHcPre(const Hc& p, const float* streams, int64_t rows, const float* mu, float* mix,
                 float* x_out, cudaStream_t stream);
void LaunchHcPost(const Hc& p, const float* mix, const float* y, int64_t rows, float* streams,
                  cudaStream_t stream);
void LaunchHcHead(const Hc& p, const float* streams, int64_t rows, const float* mu, float* out,
                  cudaStream_t stream);

void LaunchQueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                      const Rope& rope, const int64_t* positions, cudaStream_t stream);
void LaunchRope(float* x, int64_t rows, int64_t stride, const Rope& rope, const int64_t* positions,
                cudaStream_t stream);
void LaunchIndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim, const Rope& rope,
                          const int64_t* positions, cudaStream_t stream);
void LaunchEncodeMainEntries(float* v, int64_t rows, const EntryFormat& f, uint8_t* out,
                             cudaStream_t stream);
void LaunchAddApe(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
                  const int64_t* positions, cudaStream_t stream);

// MoE.
struct Router {
  int64_t experts, k;
  const float* bias;       // score layers, or null
  const int32_t* tid2eid;  // hash layers, or null
  float scaling;
};
void LaunchRouteExperts(const Router& p, const float* logits, const int32_t* tokens, int64_t rows,
                        int32_t* ids, float* weights, cudaStream_t stream);
void LaunchSwiGlu(const float* u, const float* v, int64_t rows, int64_t inter,
                  const float* row_weights, float limit, float* h, cudaStream_t stream);
// dst[i, :] = src[rows[i], :] for i < n (rows of `width` floats).
void LaunchGatherIndexed(const float* src, int64_t width, const int32_t* rows, int64_t n,
                         float* dst, cudaStream_t stream);
// The routed experts' sum: out[t, :] = Σ_j bf16(expert_out[slot[t·k + j], :]) for j < k in that
// order (FP32 sums; `slot` lists each row's k expert outputs in increasing expert id).
void LaunchSumExpertOutputs(const float* expert_out, const int32_t* slot, int64_t rows, int64_t k,
                            int64_t d, float* out, cudaStream_t stream);

// ---- cuda_attention.cu ------------------------------------------------------------------------

struct Compressor {  // CompressorParams
  int64_t ratio, width;
  const float* norm;
  float norm_eps;
  int32_t indexer;  // 0: main entry; 1: Hadamard + indexer entry
  int64_t carry_offset, carry_rows, entry_offset;
  Rope rope;
};
// One compressed entry to emit: sequence `seq` (index into seqs), group `group`.
struct CompressJob {
  int32_t seq;
  int64_t group;
};
// Emits the `jobs` (host-planned: every group a sequence's new rows complete), then stores each
// sequence's last carry_rows new rows in its carry ring. `seqs` device array; `host_seqs` host.
void LaunchCompress(const Seq* seqs, const Seq* host_seqs, int64_t num_seqs,
                    const CompressJob* jobs, int64_t num_jobs, const Compressor& p,
                    const EntryFormat& f, const float* a, const float* z, uint8_t* pool,
                    int64_t block_bytes, cudaStream_t stream);

struct Indexer {  // IndexerParams
  int64_t heads, dim, topk, entry_offset;
};
// Scratch for IndexerTopK over one sequence: see IndexerScratchFloats.
inline int64_t IndexerScratchFloats(int64_t rows, int64_t max_visible) {
  return rows * max_visible;
}
// The lightning indexer for the rows of one sequence (host_seq: its host copy; seq: the device
// pointer to it): scores every visible entry, then chosen/count per row. `scores` holds
// IndexerScratchFloats(rows_tile, max_visible) floats; the launcher tiles the rows to fit
// `scratch_floats`.
void LaunchIndexerTopK(const Seq& host_seq, const Seq* seq, const int64_t* positions,
                       const Indexer& p, const EntryFormat& f, const float* q, const float* w,
                       const uint8_t* pool, int64_t block_bytes, int32_t* chosen, int32_t* count,
                       float* scores, int64_t scratch_floats, cudaStream_t stream);

struct Attention {  // AttentionParams
  int64_t heads, head_dim, window, ratio, window_offset, entry_offset, topk;
  const float* sink;
  Rope rope;
};
// Sparse attention for every row of the step (rows, each row's sequence through seq_of_row).
// `max_candidates` (host) bounds any row's candidate count (window + compressed entries).
void LaunchAttention(const Seq* seqs, const int32_t* seq_of_row, const int64_t* positions,
                     int64_t rows, int64_t max_candidates, const Attention& p, const EntryFormat& f,
                     const float* q, const float* kv, const int32_t* chosen, const int32_t* count,
                     const uint8_t* pool, int64_t block_bytes, float* o, cudaStream_t stream);
void LaunchStoreWindow(const Seq* host_seqs, const Seq* seqs, int64_t num_seqs,
                       const EntryFormat& f, int64_t window, int64_t window_offset,
                       const uint8_t* entries, cudaStream_t stream);

}  // namespace strata::engine::cuda
