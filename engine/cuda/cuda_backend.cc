// CudaBackend (see cuda_backend.h): memory, scratch, host-side planning of the ops, and the calls
// into the kernels of engine/cuda/*.cu (declared in kernels.h). Host code only.
#include "engine/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/kernels.h"
#include "engine/kv/kv_cache.h"

namespace strata::engine {
namespace {

namespace k = cuda;

// The kernels see engine/backend.h's structs through their plain mirrors in kernels.h.
static_assert(sizeof(k::Seq) == sizeof(StepSequence) &&
              offsetof(k::Seq, state) == offsetof(StepSequence, state) &&
              offsetof(k::Seq, blocks) == offsetof(StepSequence, blocks));
static_assert(sizeof(k::Rope) == sizeof(RopeTable));
static_assert(sizeof(k::EntryFormat) == sizeof(KvEntryFormat));
static_assert(static_cast<int>(WeightFormat::kBf16) == k::kBf16 &&
              static_cast<int>(WeightFormat::kF32) == k::kF32 &&
              static_cast<int>(WeightFormat::kFp8Block) == k::kFp8 &&
              static_cast<int>(WeightFormat::kFp4Block) == k::kFp4);

// A CUDA runtime call that fails here (outside allocation) means a broken device or a bug: the
// process cannot go on computing with it.
void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA backend: %s: %s\n", what, cudaGetErrorString(err));
    std::abort();
  }
}

k::Weight ToKernel(const WeightView& w) {
  return k::Weight{static_cast<int32_t>(w.format), w.data, w.scale, w.rows, w.cols};
}
k::Rope ToKernel(const RopeTable& r) { return k::Rope{r.freqs, r.dim}; }
k::EntryFormat ToKernel(const KvEntryFormat& f) {
  return k::EntryFormat{f.nope, f.rope, f.main_bytes, f.index_dim, f.index_bytes};
}
const k::Seq* ToKernel(const StepSequence* s) { return reinterpret_cast<const k::Seq*>(s); }

// Device scratch that keeps its largest size.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  template <typename T>
  T* Get(int64_t count) {
    const int64_t bytes = std::max<int64_t>(count, 1) * static_cast<int64_t>(sizeof(T));
    if (bytes > bytes_) {
      if (ptr_ != nullptr) Check(cudaFree(ptr_), "free scratch");
      ptr_ = nullptr;
      Check(cudaMalloc(&ptr_, static_cast<size_t>(bytes)), "allocate scratch");
      bytes_ = bytes;
    }
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// Pinned host staging that keeps its largest size.
class Pinned {
 public:
  Pinned() = default;
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  ~Pinned() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  uint8_t* Get(int64_t bytes) {
    if (bytes > bytes_) {
      if (ptr_ != nullptr) Check(cudaFreeHost(ptr_), "free pinned staging");
      ptr_ = nullptr;
      Check(cudaMallocHost(&ptr_, static_cast<size_t>(bytes)), "allocate pinned staging");
      bytes_ = bytes;
    }
    return static_cast<uint8_t*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options);
  ~CudaBackend() override;

  absl::string_view name() const override { return "cuda"; }

  // ---- memory -----------------------------------------------------------------------------------
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 1)));
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the (non-sticky) allocation error
      return absl::ResourceExhaustedError(
          absl::StrCat("CUDA backend: cannot allocate ", bytes,
                       " bytes on the device: ", cudaGetErrorString(err)));
    }
    return p;
  }
  void Free(void* ptr) override {
    if (ptr != nullptr) Check(cudaFree(ptr), "cudaFree");
  }
  void ToDevice(void* dst, const void* host_src, int64_t bytes) override {
    // From pageable memory the call returns once the source has been staged, so the caller may
    // reuse it; from pinned memory it would not be, hence the synchronisation in SealRecords.
    if (bytes > 0)
      Check(cudaMemcpyAsync(dst, host_src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice,
                            stream_),
            "copy to device");
  }
  void ToHost(void* host_dst, const void* src, int64_t bytes) override {
    if (bytes <= 0) return;
    Check(
        cudaMemcpyAsync(host_dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, stream_),
        "copy to host");
    Check(cudaStreamSynchronize(stream_), "synchronise");
  }
  void Copy(void* dst, const void* src, int64_t bytes) override {
    if (bytes > 0)
      Check(
          cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream_),
          "copy on device");
  }
  absl::StatusOr<const void*> MakeResident(const void* host, int64_t bytes) override {
    absl::StatusOr<void*> p = Allocate(bytes);
    if (!p.ok()) return p.status();
    // On stream_, not with cudaMemcpy: that one runs on the legacy default stream, which the
    // non-blocking stream_ does not wait for, and from pageable memory it returns before its DMA
    // has landed — a kernel enqueued next could read the weights half-copied. The synchronisation
    // lets the caller free `host` at once even if it is pinned.
    if (bytes > 0) {
      Check(cudaMemcpyAsync(*p, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_),
            "upload weights");
      Check(cudaStreamSynchronize(stream_), "synchronise");
    }
    resident_.push_back(*p);
    return static_cast<const void*>(*p);
  }
  void Zero(void* dst, int64_t bytes) override { k::LaunchZero(dst, bytes, stream_); }

  // Checksums are computed on the host: each record comes down, is sealed, and its 64-byte header
  // goes back. Correct, not fast (a block is ~0.5 MB on the real models): a device-side checksum
  // is the next step for serving from the GPU.
  void SealRecords(absl::Span<const KvRecordSeal> seals) override {
    if (seals.empty()) return;
    int64_t largest = 0;
    for (const KvRecordSeal& s : seals) largest = std::max(largest, s.bytes);
    uint8_t* record = record_staging_.Get(largest);
    uint8_t* headers = header_staging_.Get(static_cast<int64_t>(seals.size()) * kKvHeaderBytes);
    for (size_t i = 0; i < seals.size(); ++i) {
      const KvRecordSeal& s = seals[i];
      Check(cudaMemcpyAsync(record, s.record, static_cast<size_t>(s.bytes), cudaMemcpyDeviceToHost,
                            stream_),
            "download record");
      Check(cudaStreamSynchronize(stream_), "synchronise");
      SealKvRecord(record, s.bytes, static_cast<KvRecordKind>(s.kind), s.fingerprint, s.tokens);
      std::memcpy(headers + i * kKvHeaderBytes, record, kKvHeaderBytes);
    }
    for (size_t i = 0; i < seals.size(); ++i) {
      Check(cudaMemcpyAsync(seals[i].record, headers + i * kKvHeaderBytes, kKvHeaderBytes,
                            cudaMemcpyHostToDevice, stream_),
            "upload record header");
    }
    Check(cudaStreamSynchronize(stream_), "synchronise");  // the pinned headers may be reused next
  }

  // ---- dense ops
  // ----------------------------------------------------------------------------------
  void Linear(const WeightView& w, const float* x, int64_t n, float* y) override {
    if (n <= 0 || w.rows <= 0) return;
    k::LaunchLinear(ToKernel(w), x, w.cols, 0, n, y, w.rows, 0, LinearScratch(w, n), stream_);
  }
  void GroupedLinear(const WeightView& w, int64_t groups, const float* x, int64_t n,
                     float* y) override {
    if (n <= 0 || w.rows <= 0) return;
    const int64_t rows_g = w.rows / groups, cols = w.cols;
    const int64_t element = w.format == WeightFormat::kF32 ? 4 : 2;
    for (int64_t g = 0; g < groups; ++g) {
      WeightView wg = w;
      wg.data = static_cast<const uint8_t*>(w.data) + g * rows_g * cols * element;
      wg.rows = rows_g;
      k::LaunchLinear(ToKernel(wg), x, groups * cols, g * cols, n, y, groups * rows_g, g * rows_g,
                      LinearScratch(wg, n), stream_);
    }
  }
  void Embed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n, int64_t copies,
             float* out) override {
    k::LaunchEmbed(table, d, ids, n, copies, out, stream_);
  }
  void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
               float* out) override {
    k::LaunchRmsNorm(x, w, rows, dim, eps, out, stream_);
  }
  void RoundBf16(float* x, int64_t n) override { k::LaunchRoundBf16(x, n, stream_); }
  void ScaleBf16(float* x, int64_t n, float factor) override {
    k::LaunchScaleBf16(x, n, factor, stream_);
  }
  void AddBf16(const float* a, const float* b, int64_t n, float* out) override {
    k::LaunchAddBf16(a, b, n, out, stream_);
  }
  void GatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                  float* dst) override {
    k::LaunchGatherRows(src, width, idx, n, dst, stream_);
  }

  // ---- mHC
  // ----------------------------------------------------------------------------------------
  void HcPre(const HcParams& p, const float* streams, int64_t rows, float* mix,
             float* x_out) override {
    if (rows <= 0) return;
    // μ = W_fn x̂ lands in `mix`, which the kernel then turns into the mixes row by row.
    Linear(WeightView{WeightFormat::kF32, p.fn, nullptr, p.mix, p.hc * p.d}, streams, rows, mix);
    k::LaunchHcPre(HcToKernel(p), streams, rows, mix, mix, x_out, stream_);
  }
  void HcPost(const HcParams& p, const float* mix, const float* y, int64_t rows,
              float* streams) override {
    k::LaunchHcPost(HcToKernel(p), mix, y, rows, streams, stream_);
  }
  void HcHead(const HcParams& p, const float* streams, int64_t rows, float* out) override {
    if (rows <= 0) return;
    float* mu = hc_mu_.Get<float>(rows * p.mix);
    Linear(WeightView{WeightFormat::kF32, p.fn, nullptr, p.mix, p.hc * p.d}, streams, rows, mu);
    k::LaunchHcHead(HcToKernel(p), streams, rows, mu, out, stream_);
  }

  // ---- attention
  // ----------------------------------------------------------------------------------
  void QueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                  const RopeTable& rope, const int64_t* positions) override {
    k::LaunchQueryHeads(q, rows, heads, dim, eps, ToKernel(rope), positions, stream_);
  }
  void Rope(float* x, int64_t rows, int64_t stride, const RopeTable& rope,
            const int64_t* positions) override {
    k::LaunchRope(x, rows, stride, ToKernel(rope), positions, stream_);
  }
  void IndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim, const RopeTable& rope,
                      const int64_t* positions) override {
    k::LaunchIndexerQueries(q, rows, heads, dim, ToKernel(rope), positions, stream_);
  }
  void EncodeMainEntries(float* v, int64_t rows, const KvEntryFormat& f, uint8_t* out) override {
    k::LaunchEncodeMainEntries(v, rows, ToKernel(f), out, stream_);
  }
  void AddApe(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
              const int64_t* positions) override {
    k::LaunchAddApe(z, rows, width, ape, ratio, positions, stream_);
  }
  void Compress(const StepBatch& step, const CompressorParams& p, const KvEntryFormat& f,
                const float* a, const float* z, const KvPoolView& pool) override {
    std::vector<k::CompressJob> jobs;
    for (size_t i = 0; i < step.host_seqs.size(); ++i) {
      const StepSequence& s = step.host_seqs[i];
      for (int64_t g = s.start / p.ratio; (g + 1) * p.ratio <= s.start + s.n; ++g) {
        jobs.push_back(k::CompressJob{static_cast<int32_t>(i), g});
      }
    }
    k::CompressJob* device_jobs =
        compress_jobs_.Get<k::CompressJob>(static_cast<int64_t>(jobs.size()));
    ToDevice(device_jobs, jobs.data(), static_cast<int64_t>(jobs.size() * sizeof(k::CompressJob)));
    const k::Compressor c{p.ratio,      p.width,           p.norm,
                          p.norm_eps,   p.indexer ? 1 : 0, p.carry_offset,
                          p.carry_rows, p.entry_offset,    ToKernel(p.rope)};
    k::LaunchCompress(ToKernel(step.seqs), ToKernel(step.host_seqs.data()), step.num_seqs(),
                      device_jobs, static_cast<int64_t>(jobs.size()), c, ToKernel(f), a, z,
                      pool.base, pool.block_bytes, stream_);
  }
  void IndexerTopK(const StepBatch& step, const IndexerParams& p, const KvEntryFormat& f,
                   const float* q, const float* w, const KvPoolView& pool, int32_t* chosen,
                   int32_t* count) override {
    // Scores are tiled by rows to at most 64 MiB (a 1M-token context has 262,144 entries).
    constexpr int64_t kMaxScoreFloats = int64_t{16} << 20;
    for (size_t i = 0; i < step.host_seqs.size(); ++i) {
      const StepSequence& s = step.host_seqs[i];
      const int64_t max_visible = (s.start + s.n) / 4;
      const int64_t floats = std::clamp<int64_t>(s.n * max_visible, max_visible,
                                                 std::max(kMaxScoreFloats, max_visible));
      float* scores = indexer_scores_.Get<float>(floats);
      k::LaunchIndexerTopK(*ToKernel(&s), ToKernel(step.seqs) + i, step.positions,
                           k::Indexer{p.heads, p.dim, p.topk, p.entry_offset}, ToKernel(f), q, w,
                           pool.base, pool.block_bytes, chosen, count, scores, floats, stream_);
    }
  }
  void Attention(const StepBatch& step, const AttentionParams& p, const KvEntryFormat& f,
                 const float* q, const float* kv, const int32_t* chosen, const int32_t* count,
                 const KvPoolView& pool, float* o) override {
    int64_t compressed = 0;
    if (p.ratio == 4) compressed = p.topk;
    if (p.ratio == 128) {
      for (const StepSequence& s : step.host_seqs)
        compressed = std::max(compressed, (s.start + s.n) / 128);
    }
    k::LaunchAttention(ToKernel(step.seqs), step.seq_of_row, step.positions, step.rows,
                       p.window + compressed,
                       k::Attention{p.heads, p.head_dim, p.window, p.ratio, p.window_offset,
                                    p.entry_offset, p.topk, p.sink, ToKernel(p.rope)},
                       ToKernel(f), q, kv, chosen, count, pool.base, pool.block_bytes, o, stream_);
  }
  void StoreWindow(const StepBatch& step, const KvEntryFormat& f, int64_t window,
                   int64_t window_offset, const uint8_t* entries) override {
    k::LaunchStoreWindow(ToKernel(step.host_seqs.data()), ToKernel(step.seqs), step.num_seqs(),
                         ToKernel(f), window, window_offset, entries, stream_);
  }

  // ---- MoE
  // ----------------------------------------------------------------------------------------
  void RouteExperts(const RouterParams& p, const float* logits, const int32_t* tokens, int64_t rows,
                    int32_t* ids, float* weights) override {
    k::LaunchRouteExperts(k::Router{p.experts, p.k, p.bias, p.tid2eid, p.scaling}, logits, tokens,
                          rows, ids, weights, stream_);
  }
  void SwiGlu(const float* u, const float* v, int64_t rows, int64_t inter, const float* row_weights,
              float limit, float* h) override {
    k::LaunchSwiGlu(u, v, rows, inter, row_weights, limit, h, stream_);
  }
  absl::Status RoutedExperts(absl::Span<const ExpertWeights> experts, const float* x, int64_t rows,
                             const int32_t* ids, const float* weights, int64_t k, float limit,
                             float* out) override;

 private:
  CudaBackend(int device, cudaStream_t stream) : device_(device), stream_(stream) {}

  static k::Hc HcToKernel(const HcParams& p) {
    return k::Hc{p.base, p.scale, p.hc, p.d, p.mix, p.sinkhorn_iters, p.hc_eps, p.norm_eps};
  }
  float* LinearScratch(const WeightView& w, int64_t n) {
    const bool quantized =
        w.format == WeightFormat::kFp8Block || w.format == WeightFormat::kFp4Block;
    return quantized ? linear_scratch_.Get<float>(k::LinearScratchFloats(n, w.cols)) : nullptr;
  }

  const int device_;
  cudaStream_t stream_;
  std::vector<void*> resident_;
  Scratch linear_scratch_, hc_mu_, compress_jobs_, indexer_scores_;
  Scratch expert_rows_, expert_weights_, expert_slots_, expert_x_, expert_u_, expert_v_, expert_y_;
  Pinned record_staging_, header_staging_;
};

absl::StatusOr<std::unique_ptr<Backend>> CudaBackend::Create(const CudaBackendOptions& options) {
  const int count = CudaDeviceCount();
  if (options.device < 0 || options.device >= count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA backend: device ", options.device, " not present (this machine has ", count, ")"));
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, options.device) != cudaSuccess) {
    return absl::FailedPreconditionError("CUDA backend: cannot read the device's properties");
  }
  if (prop.major != 9) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA backend: device ", options.device, " (", prop.name, ") is compute capability ",
        prop.major, ".", prop.minor, "; the kernels are built for Hopper (sm_90a)"));
  }
  if (cudaSetDevice(options.device) != cudaSuccess) {
    return absl::FailedPreconditionError("CUDA backend: cannot select the device");
  }
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    return absl::FailedPreconditionError("CUDA backend: cannot create a stream");
  }
  return std::unique_ptr<Backend>(new CudaBackend(options.device, stream));
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  for (void* p : resident_) cudaFree(p);
  cudaStreamDestroy(stream_);
}

absl::Status CudaBackend::RoutedExperts(absl::Span<const ExpertWeights> experts, const float* x,
                                        int64_t rows, const int32_t* ids, const float* weights,
                                        int64_t k, float limit, float* out) {
  if (rows <= 0) return absl::OkStatus();
  const int64_t num_experts = static_cast<int64_t>(experts.size());
  const int64_t pairs = rows * k;
  // The routing comes to the host (rows·k ids and weights) to plan the experts' batches: pair
  // (t, j) gets a slot; each expert's slots are contiguous, in row order.
  std::vector<int32_t> host_ids(static_cast<size_t>(pairs));
  std::vector<float> host_weights(static_cast<size_t>(pairs));
  ToHost(host_ids.data(), ids, pairs * 4);
  ToHost(host_weights.data(), weights, pairs * 4);
  std::vector<int64_t> per_expert(static_cast<size_t>(num_experts) + 1, 0);
  for (int32_t e : host_ids) {
    if (e < 0 || e >= num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert id ", e, " out of range (the layer has ", num_experts, " experts)"));
    }
    ++per_expert[static_cast<size_t>(e) + 1];
  }
  if (num_experts == 0) return absl::OkStatus();  // then k = 0: nothing routed, nothing to size
  const int64_t d = experts[0].w2.rows, inter = experts[0].w1.rows;
  for (int64_t e = 0; e < num_experts; ++e)
    per_expert[static_cast<size_t>(e) + 1] += per_expert[static_cast<size_t>(e)];
  std::vector<int64_t> next(per_expert.begin(), per_expert.end() - 1);
  std::vector<int32_t> slot_row(static_cast<size_t>(pairs)), pair_slot(static_cast<size_t>(pairs));
  std::vector<float> slot_weight(static_cast<size_t>(pairs));
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = host_ids[static_cast<size_t>(t * k + j)];
      const int64_t slot = next[static_cast<size_t>(e)]++;
      slot_row[static_cast<size_t>(slot)] = static_cast<int32_t>(t);
      slot_weight[static_cast<size_t>(slot)] = host_weights[static_cast<size_t>(t * k + j)];
      pair_slot[static_cast<size_t>(t * k + j)] = static_cast<int32_t>(slot);
    }
    // Each row's outputs are summed in increasing expert id (stable for a repeated id).
    int32_t* row_slots = pair_slot.data() + t * k;
    const int32_t* row_ids = host_ids.data() + t * k;
    std::vector<int64_t> order(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) order[static_cast<size_t>(j)] = j;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return row_ids[a] < row_ids[b]; });
    std::vector<int32_t> sorted(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j)
      sorted[static_cast<size_t>(j)] = row_slots[order[static_cast<size_t>(j)]];
    std::copy(sorted.begin(), sorted.end(), row_slots);
  }
  int32_t* d_rows = expert_rows_.Get<int32_t>(pairs);
  float* d_weights = expert_weights_.Get<float>(pairs);
  int32_t* d_slots = expert_slots_.Get<int32_t>(pairs);
  float* xs = expert_x_.Get<float>(pairs * d);
  float* u = expert_u_.Get<float>(pairs * inter);
  float* v = expert_v_.Get<float>(pairs * inter);
  float* ys = expert_y_.Get<float>(pairs * d);
  ToDevice(d_rows, slot_row.data(), pairs * 4);
  ToDevice(d_weights, slot_weight.data(), pairs * 4);
  ToDevice(d_slots, pair_slot.data(), pairs * 4);
  k::LaunchGatherIndexed(x, d, d_rows, pairs, xs, stream_);
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t first = per_expert[static_cast<size_t>(e)],
                  m = per_expert[static_cast<size_t>(e) + 1] - first;
    if (m == 0) continue;
    const ExpertWeights& ew = experts[static_cast<size_t>(e)];
    k::LaunchLinear(ToKernel(ew.w1), xs + first * d, d, 0, m, u + first * inter, inter, 0,
                    LinearScratch(ew.w1, m), stream_);
    k::LaunchLinear(ToKernel(ew.w3), xs + first * d, d, 0, m, v + first * inter, inter, 0,
                    LinearScratch(ew.w3, m), stream_);
  }
  k::LaunchSwiGlu(u, v, pairs, inter, d_weights, limit, u, stream_);
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t first = per_expert[static_cast<size_t>(e)],
                  m = per_expert[static_cast<size_t>(e) + 1] - first;
    if (m == 0) continue;
    const ExpertWeights& ew = experts[static_cast<size_t>(e)];
    k::LaunchLinear(ToKernel(ew.w2), u + first * inter, inter, 0, m, ys + first * d, d, 0,
                    LinearScratch(ew.w2, m), stream_);
  }
  k::LaunchSumExpertOutputs(ys, d_slots, rows, k, d, out, stream_);
  return absl::OkStatus();
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options) {
  return CudaBackend::Create(options);
}

}  // namespace strata::engine
