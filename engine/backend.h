// engine::Backend: the memory the model's tensors live in and every op of the forward pass
// (MODEL.md §4–§5). The forward pass (engine/model.h, engine/attention.cc) is only a sequence of
// calls to this interface: it never reads or writes an activation, a weight or a KV byte itself,
// so a backend whose memory is not host memory (CudaBackend, engine/cuda/) runs the same model.
// CpuBackend (engine/cpu/) is always built and is the reference the others are compared with;
// tests/unit/engine/reference_backend.h holds a scalar version of every op, written from
// MODEL.md, that each optimized op is checked against.
//
// Memory. Pointers passed to ops are *backend memory*: from Allocate(), from MakeResident(), or
// (until the KV pool moves to device memory with the CUDA backend) the KV pool's blocks and the
// sequences' state slots. For CpuBackend backend memory is host memory.
//
// Numerics (MODEL.md §2/§5): weights stay in their checkpoint formats (BF16, FP8 E4M3 with one
// UE8M0 scale per 128×128 block, packed FP4 E2M1 with one UE8M0 scale per 32 inputs); before an
// FP8 or FP4 linear the activations are quantized per block of 128 along the input dimension to
// E4M3 with a power-of-two scale 2^ceil(log2(max(amax, 1e-4)/448)); accumulation is FP32.
// "bf16(v)" below is round-to-nearest-even to BF16, kept in an FP32 slot. Every op computes each
// token's result independently of which other tokens share the call (batch invariance), and the
// ops that run over a sequence's past (compressors, indexer, attention) visit it in position
// order, so a prompt gives the same bytes whether it is run whole, in chunks or token by token.
//
// Threading: a backend is used by one thread at a time (the engine's step loop); it may use
// worker threads of its own inside an op. Ops run in call order; results written by an op are
// visible to the next op and, after ToHost() returns, to the host.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace strata::engine {

enum class WeightFormat : uint8_t {
  kBf16,      // data: uint16 BF16 [rows, cols]
  kF32,       // data: float [rows, cols]
  kFp8Block,  // data: E4M3 [rows, cols]; scale: UE8M0 [ceil(rows/128), ceil(cols/128)]
  kFp4Block,  // data: packed E2M1 [rows, cols/2] (element 2i low nibble); scale: UE8M0 [rows,
              // cols/32]
};

inline absl::string_view WeightFormatName(WeightFormat format) {
  switch (format) {
    case WeightFormat::kBf16:
      return "bf16";
    case WeightFormat::kF32:
      return "f32";
    case WeightFormat::kFp8Block:
      return "fp8";
    case WeightFormat::kFp4Block:
      return "fp4";
  }
  return "?";
}

// Bytes a [rows, cols] weight of `format` occupies: its data plus its UE8M0 scales.
inline int64_t WeightBytes(WeightFormat format, int64_t rows, int64_t cols) {
  switch (format) {
    case WeightFormat::kBf16:
      return 2 * rows * cols;
    case WeightFormat::kF32:
      return 4 * rows * cols;
    case WeightFormat::kFp8Block:
      return rows * cols + ((rows + 127) / 128) * ((cols + 127) / 128);
    case WeightFormat::kFp4Block:
      return rows * cols / 2 + rows * (cols / 32);
  }
  return 0;
}

// A weight matrix y = W x with W of shape [rows (out), cols (in)], as the checkpoint stores it.
// Borrowed backend memory (see MakeResident).
struct WeightView {
  WeightFormat format = WeightFormat::kBf16;
  const void* data = nullptr;
  const uint8_t* scale = nullptr;  // UE8M0 bytes for kFp8Block / kFp4Block
  int64_t rows = 0;
  int64_t cols = 0;
};

// ---- What the ops of one step see ----------------------------------------------------------

// One sequence's part of a step: `n` new tokens at positions start … start+n−1, held in rows
// row … row+n−1 of the step's activations.
struct StepSequence {
  int64_t start = 0;
  int64_t n = 0;
  int64_t row = 0;
  uint8_t* state = nullptr;         // the sequence's state slot (KvLayout::state_bytes())
  const int32_t* blocks = nullptr;  // block table: block b covers positions [128b, 128b+128)
};

// A step: T rows over S sequences. The arrays are backend memory; the host_ spans are host
// copies of the same values, for planning work (loop bounds, grid sizes) without reading device
// memory. For CpuBackend both may point at the same arrays.
struct StepBatch {
  int64_t rows = 0;                     // T
  const int64_t* positions = nullptr;   // [T] each row's position in its sequence
  const int32_t* seq_of_row = nullptr;  // [T] index into seqs
  const StepSequence* seqs = nullptr;   // [S]
  absl::Span<const StepSequence> host_seqs;
  absl::Span<const int64_t> host_positions;
  int64_t num_seqs() const { return static_cast<int64_t>(host_seqs.size()); }
};

// The KV pool's blocks: block `id` starts at base + id·block_bytes (engine/kv/kv_cache.h).
struct KvPoolView {
  uint8_t* base = nullptr;
  int64_t block_bytes = 0;
};

// The stored entry formats (engine/kv/kv_codec.h, DESIGN.md §5):
//   main entry    [nope × E4M3][nope/64 × UE8M0][rope × BF16][zero pad to main_bytes]
//   indexer entry [dim/2 × packed E2M1][dim/32 × UE8M0][zero pad to index_bytes]
// Encoding a main vector: per block of 64 non-RoPE values, e = ceil(log2(max(amax, 1e-4)/448)),
// codes = E4M3(v·2^−e) (nearest even, saturating), scale byte e+127; the RoPE part as BF16. An
// indexer vector: per block of 32, e = ceil(log2(max(amax, 6·2^−126)/6)), codes = E2M1(v·2^−e).
// "Simulated" FP8/FP4 values are the decoded values of those bytes.
struct KvEntryFormat {
  int64_t nope = 0, rope = 0, main_bytes = 0;  // main entries
  int64_t index_dim = 0, index_bytes = 0;      // indexer entries
};

// RoPE frequencies f_j (j < dim/2) in backend memory; pairs (x[2j], x[2j+1]) of the last `dim`
// values of a vector rotate by angle a = fp32(t·f_j) (negated for the inverse):
// (x0, x1) ← (bf16(x0·cos a − x1·sin a), bf16(x0·sin a + x1·cos a)), cos/sin of the FP32 angle.
struct RopeTable {
  const float* freqs = nullptr;
  int64_t dim = 0;
};

// mHC weights of one sublayer (or the head): μ = W_fn x̂ with W_fn [mix, hc·d] FP32.
struct HcParams {
  const float* fn = nullptr;     // [mix, hc·d]
  const float* base = nullptr;   // [mix]
  const float* scale = nullptr;  // [3] (sublayers) or [1] (head)
  int64_t hc = 0, d = 0;
  int64_t mix = 0;  // (2+hc)·hc for sublayers, hc for the head
  int64_t sinkhorn_iters = 0;
  float hc_eps = 0, norm_eps = 0;
};

// A compressor of one layer (ratio m = 4: CSA, overlapping; m = 128: HCA). Rows of `a`/`z`
// carry `width` channels (2·out for m = 4, out for m = 128; out = entry dimension).
struct CompressorParams {
  int64_t ratio = 0;
  int64_t width = 0;
  const float* norm = nullptr;  // [out] RMSNorm weight
  float norm_eps = 0;
  bool indexer = false;      // Hadamard + FP4 indexer entry instead of an FP8 main entry
  int64_t carry_offset = 0;  // in the state slot: carry_rows × [a row | z row] FP32
  int64_t carry_rows = 0;    // the ring holds the rows of positions p at p % carry_rows
  int64_t entry_offset = 0;  // this layer's page in a block (after the record header)
  RopeTable rope;
};

// The lightning indexer of a CSA layer.
struct IndexerParams {
  int64_t heads = 0, dim = 0;  // IH, ic
  int64_t topk = 0;
  int64_t entry_offset = 0;  // the indexer page in a block
};

// One layer's sparse attention.
struct AttentionParams {
  int64_t heads = 0, head_dim = 0;
  int64_t window = 0;           // w
  int64_t ratio = 0;            // 0, 4 or 128
  int64_t window_offset = 0;    // the window ring in the state slot: w main entries, p at p % w
  int64_t entry_offset = 0;     // the main page in a block
  int64_t topk = 0;             // row stride of `chosen` (ratio 4)
  const float* sink = nullptr;  // [heads]
  RopeTable rope;
};

// Routing of one MoE layer.
struct RouterParams {
  int64_t experts = 0, k = 0;
  const float* bias = nullptr;       // [experts], score-routed layers
  const int32_t* tid2eid = nullptr;  // [vocab, k], hash-routed layers (bias is then null)
  float scaling = 1;                 // routed_scaling_factor
};

struct ExpertWeights {
  WeightView w1, w3, w2;
};

// A KV record (a block or a state slot) to seal: `bytes` of backend memory, header included.
struct KvRecordSeal {
  uint8_t* record = nullptr;
  int64_t bytes = 0;
  uint16_t kind = 0;  // engine::KvRecordKind
  uint64_t fingerprint = 0;
  uint64_t tokens = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual absl::string_view name() const = 0;

  // ---- Memory ---------------------------------------------------------------------------------
  // `bytes` of backend memory, 64-byte aligned, contents unspecified; ResourceExhausted when the
  // backend is out of memory.
  virtual absl::StatusOr<void*> Allocate(int64_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual void ToDevice(void* dst, const void* host_src, int64_t bytes) = 0;
  virtual void ToHost(void* host_dst, const void* src, int64_t bytes) = 0;
  virtual void Copy(void* dst, const void* src, int64_t bytes) = 0;  // backend → backend
  // Read-only host bytes (a checkpoint tensor, a converted vector) as backend memory that lives
  // as long as the backend: a copy (the CPU backend's lies on huge pages; CpuBackendOptions::
  // copy_weights off returns the host pointer itself).
  virtual absl::StatusOr<const void*> MakeResident(const void* host, int64_t bytes) = 0;
  virtual void Zero(void* dst, int64_t bytes) = 0;
  // Whether backend memory is host memory (the CPU backend): then host code may also read and
  // write it directly — the KV pool a transport registers, state slots in host vectors.
  virtual bool host_memory() const { return false; }
  // Seals KV records in backend memory (engine/kv/kv_cache.h's SealKvRecord: header and checksum).
  virtual void SealRecords(absl::Span<const KvRecordSeal> seals) = 0;

  // ---- Dense ops ------------------------------------------------------------------------------
  // y[n, rows] = x[n, cols] · Wᵀ in FP32. For kFp8Block and kFp4Block, x is first quantized per
  // 128-block of each row to E4M3 (see above); for kBf16 and kF32, x is used as given.
  virtual void Linear(const WeightView& w, const float* x, int64_t n, float* y) = 0;
  // The grouped output projection: W [groups·rows_g, cols_g] (BF16 or F32) applied group by
  // group, y[t, g·rows_g + i] = Σ_k W[g·rows_g + i, k] · x[t, g·cols_g + k], for x [n,
  // groups·cols_g].
  virtual void GroupedLinear(const WeightView& w, int64_t groups, const float* x, int64_t n,
                             float* y) = 0;
  // out[t, c, :] = bf16 row ids[t] of table [vocab, d] (BF16), for c < copies.
  virtual void Embed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n,
                     int64_t copies, float* out) = 0;
  // Row r of out[rows, dim] = bf16(u · rsqrt(mean(u²) + eps) · w) with u = bf16(x row r); the
  // statistic in FP32. out may alias x.
  virtual void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                       float* out) = 0;
  // x = bf16(x); x = bf16(bf16(x) · factor); out = bf16(a + b) — each over n values in place /
  // elementwise (out may alias a or b).
  virtual void RoundBf16(float* x, int64_t n) = 0;
  virtual void ScaleBf16(float* x, int64_t n, float factor) = 0;
  virtual void AddBf16(const float* a, const float* b, int64_t n, float* out) = 0;
  // dst[i, :] = src[idx[i], :] for rows of `width` floats.
  virtual void GatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                          float* dst) = 0;

  // ---- mHC (MODEL.md §4) ------------------------------------------------------------------------
  // For each row t of streams [rows, hc, d]: μ = ρ · (W_fn x̂), ρ = rsqrt(mean(x̂²) + norm_eps);
  // pre = σ(μ[0:hc]·s0 + b) + hc_eps, post = 2σ(μ[hc:2hc]·s1 + b), comb = Sinkhorn(μ[2hc:]·s2 + b)
  // (row softmax + hc_eps, then column sums, then iters−1 × (rows, columns), each divided by
  // sum + hc_eps). mix[t] = [pre | post | comb (row-major, comb[i·hc + j] mixes stream i into j)];
  // x_out[t] = bf16(Σ_i pre_i X_i).
  virtual void HcPre(const HcParams& p, const float* streams, int64_t rows, float* mix,
                     float* x_out) = 0;
  // streams[t, j] = bf16(post_j · y[t] + Σ_i comb[i·hc + j] · X_i) (the old X on the right).
  virtual void HcPost(const HcParams& p, const float* mix, const float* y, int64_t rows,
                      float* streams) = 0;
  // The head's mix: pre = σ(ρ·μ·s0 + b) + hc_eps (no Sinkhorn); out[t] = bf16(Σ_i pre_i X_i).
  virtual void HcHead(const HcParams& p, const float* streams, int64_t rows, float* out) = 0;

  // ---- Attention (MODEL.md §4) ------------------------------------------------------------------
  // q [rows, heads, dim]: per head u = bf16(q); the per-head scaling in BF16 arithmetic
  // (s = bf16(Σ bf16(u²) / dim) in FP32, s = bf16(s + eps), g = bf16(1/sqrt(s)), u = bf16(u·g));
  // then RoPE at the row's position on the last rope.dim values.
  virtual void QueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                          const RopeTable& rope, const int64_t* positions) = 0;
  // RoPE at each row's position on the last rope.dim values of each row of x [rows, stride].
  virtual void Rope(float* x, int64_t rows, int64_t stride, const RopeTable& rope,
                    const int64_t* positions) = 0;
  // The indexer queries q [rows, heads, dim]: per head bf16, RoPE on the last rope.dim values,
  // the normalised Walsh–Hadamard rotation, simulated FP4 (blocks of 32). The rotation is the
  // in-place butterfly in FP32 — for h = 1, 2, 4, … < dim, for each pair (j, j+h) with j mod 2h
  // < h: (x_j, x_{j+h}) ← (x_j + x_{j+h}, x_j − x_{j+h}) — then x = bf16(x · fp32(1/sqrt(dim))).
  virtual void IndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim,
                              const RopeTable& rope, const int64_t* positions) = 0;
  // Main entries of v [rows, nope+rope] encoded into out [rows, main_bytes]; v rewritten with the
  // simulated values.
  virtual void EncodeMainEntries(float* v, int64_t rows, const KvEntryFormat& f, uint8_t* out) = 0;
  // z[t, :] += ape[position_t % ratio, :] for z [rows, width].
  virtual void AddApe(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
                      const int64_t* positions) = 0;
  // Runs a compressor over the step's new rows a, z [T, width] (z with ape added): every entry g
  // completed by the step (its last token (g+1)·m − 1 is new) is pooled and written into slot
  // g mod (128/m) of block g·m/128's page at entry_offset; then the last carry_rows new rows are
  // stored in the state's carry ring. Pooling, per output channel ch: candidates are group g's
  // tokens (channels [out, 2·out) of a and z for m = 4, [0, out) for m = 128) and, for m = 4
  // and g > 0, group g−1's tokens (channels [0, out)), previous group first; p = softmax over the
  // candidates of z (FP32: e_i = exp(z_i − max), S = Σ e_i), entry[ch] = bf16(Σ_i (e_i/S)·a_i),
  // sums in candidate order. Rows of positions before the step come from
  // the carry ring. Then RMSNorm (norm, in FP32, BF16 result), RoPE at position g·m on the last
  // rope.dim values; main: encoded as a main entry; indexer: Walsh–Hadamard rotation (as in
  // IndexerQueries), then encoded as an indexer entry.
  virtual void Compress(const StepBatch& step, const CompressorParams& p, const KvEntryFormat& f,
                        const float* a, const float* z, const KvPoolView& pool) = 0;
  // The lightning indexer: for row t at position p of sequence s, the visible entries are
  // j < (p+1)/4 of s's indexer page; score(j) = Σ_h w[t,h] · ReLU(q[t,h,:] · k_j) in FP32, heads
  // in order (k_j decoded from its FP4 bytes). chosen[t, 0:count[t]] = the min(topk, visible)
  // highest-scoring j (ties: lower j first), in increasing j.
  virtual void IndexerTopK(const StepBatch& step, const IndexerParams& p, const KvEntryFormat& f,
                           const float* q, const float* w, const KvPoolView& pool, int32_t* chosen,
                           int32_t* count) = 0;
  // Sparse attention with the sink. For row t at position p of sequence s, the candidates are, in
  // this order: the window p−w+1 … p (clamped at 0; positions ≥ s.start from kv [T, head_dim],
  // earlier ones decoded from s's window ring), then the compressed main entries: for ratio 4
  // chosen[t, 0:count[t]], for ratio 128 every j < (p+1)/128. Per head h: logits = q_h·k ·
  // 1/sqrt(dim) (FP32), m = max(sink_h, logits), e_j = exp(logit_j − m), denominator D = exp(sink_h
  // − m) + Σ e_j, o_h = bf16(Σ_j (e_j/D)·k_j) in candidate order, then inverse RoPE at p on o_h's
  // last rope.dim values. Candidate keys are the simulated values (FP8 part decoded with its scale,
  // RoPE part BF16). o: [T, heads, head_dim].
  virtual void Attention(const StepBatch& step, const AttentionParams& p, const KvEntryFormat& f,
                         const float* q, const float* kv, const int32_t* chosen,
                         const int32_t* count, const KvPoolView& pool, float* o) = 0;
  // Stores each sequence's new main entries entries [T, main_bytes] into its window ring (the
  // last min(n, window) of them, position p at slot p % window). Run after Attention.
  virtual void StoreWindow(const StepBatch& step, const KvEntryFormat& f, int64_t window,
                           int64_t window_offset, const uint8_t* entries) = 0;

  // ---- MoE (MODEL.md §4) ------------------------------------------------------------------------
  // From gate logits [rows, experts] (FP32): s = sqrt(softplus(g)); hash layers take
  // tid2eid[tokens[t]] (in table order), score layers the top k of s + bias (in decreasing
  // s + bias; ties: lower id first); with S = Σ s over the chosen in that order,
  // weights[j] = s[ids[j]] / S · scaling. ids, weights: [rows, k].
  virtual void RouteExperts(const RouterParams& p, const float* logits, const int32_t* tokens,
                            int64_t rows, int32_t* ids, float* weights) = 0;
  // h = bf16(silu(min(bf16(u), limit)) · clamp(bf16(v), −limit, limit) · weight) with weight =
  // row_weights[r] (skipped, not multiplied by 1, when row_weights is null); u, v, h [rows, inter].
  virtual void SwiGlu(const float* u, const float* v, int64_t rows, int64_t inter,
                      const float* row_weights, float limit, float* h) = 0;
  // Routed experts: out[t] = Σ over t's k experts, in increasing expert id, of
  // bf16(w2 · SwiGlu(w1 x, w3 x, weight)) accumulated in FP32 (not rounded). `experts` is a host
  // array of the layer's experts; ids, weights [rows, k] backend memory. InvalidArgument for an
  // id outside [0, experts.size()).
  virtual absl::Status RoutedExperts(absl::Span<const ExpertWeights> experts, const float* x,
                                     int64_t rows, const int32_t* ids, const float* weights,
                                     int64_t k, float limit, float* out) = 0;
};

// Backend memory with an owner: freed with the backend that allocated it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(Backend& backend, int64_t bytes);
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }

  void Reset();
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  int64_t bytes() const { return bytes_; }

 private:
  Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// The always-present CPU backend; `threads` 0 = one per hardware thread.
std::unique_ptr<Backend> MakeCpuBackend(int threads = 0);

}  // namespace strata::engine
