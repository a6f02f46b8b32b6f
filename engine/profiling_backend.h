// ProfilingBackend: an engine::Backend decorator that shows where a forward pass's time goes, op
// by op. It wraps another backend (not owned), forwards every call to it unchanged — memory,
// pointers and results are the inner backend's own — and adds up, per op, the calls and the host
// wall time (std::chrono::steady_clock) around each compute op. Linear and GroupedLinear are kept
// apart per weight format and shape ("Linear fp8 [1536x1024]"), with the weight bytes each call
// reads, so the report shows each linear's share and its weight-read bandwidth.
//
//   ProfilingBackend profiler(*backend);   // build the model, KV pool, experts on `profiler`
//   profiler.Reset();
//   ... timed steps ...
//   std::printf("%s", profiler.Report(elapsed_seconds).c_str());
//
// Times are host wall time around each call. They are exact only for a backend whose ops finish
// before they return (host_memory() backends such as CpuBackend); for an asynchronous backend
// (CudaBackend) they are launch times, and the device time shows up where the host waits (a
// ToHost, not profiled) — in the report's "other" line.
//
// Threading: as any Backend, one calling thread at a time; Reset, Stats and Report on that thread
// too (between ops).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/backend.h"

namespace strata::engine {

class ProfilingBackend final : public Backend {
 public:
  // One line of the profile: an op (or a linear's format and shape) and what its calls took.
  struct OpStats {
    std::string key;  // "RmsNorm", "Linear fp8 [1536x1024]"
    int64_t calls = 0;
    double seconds = 0;       // host wall time, all calls
    double weight_bytes = 0;  // weight bytes read, all calls (linears; 0 for the other ops)
  };

  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}

  // Forgets every count and time (call before the part of a run to profile).
  void Reset();
  // Every op called since the last Reset, most time first.
  std::vector<OpStats> Stats() const;
  // A table of Stats(): key, calls, total ms, % of `total_seconds` and, for linears, weight GB/s;
  // then "other (not in ops)", the part of `total_seconds` spent outside the profiled ops.
  std::string Report(double total_seconds) const;

  // ---- Forwarded unchanged, not timed ---------------------------------------------------------
  absl::string_view name() const override { return inner_.name(); }
  absl::StatusOr<void*> Allocate(int64_t bytes) override { return inner_.Allocate(bytes); }
  void Free(void* ptr) override { inner_.Free(ptr); }
  void ToDevice(void* dst, const void* host_src, int64_t bytes) override {
    inner_.ToDevice(dst, host_src, bytes);
  }
  void ToHost(void* host_dst, const void* src, int64_t bytes) override {
    inner_.ToHost(host_dst, src, bytes);
  }
  void Copy(void* dst, const void* src, int64_t bytes) override { inner_.Copy(dst, src, bytes); }
  absl::StatusOr<const void*> MakeResident(const void* host, int64_t bytes) override {
    return inner_.MakeResident(host, bytes);
  }
  void Zero(void* dst, int64_t bytes) override { inner_.Zero(dst, bytes); }
  bool host_memory() const override { return inner_.host_memory(); }

  // ---- Forwarded and timed --------------------------------------------------------------------
  void SealRecords(absl::Span<const KvRecordSeal> seals) override;
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
  using Clock = std::chrono::steady_clock;

  // The timed ops; kLinear and kGroupedLinear are counted per LinearKey instead of in ops_.
  enum class Op : uint8_t {
    kLinear,
    kGroupedLinear,
    kEmbed,
    kRmsNorm,
    kRoundBf16,
    kScaleBf16,
    kAddBf16,
    kGatherRows,
    kHcPre,
    kHcPost,
    kHcHead,
    kQueryHeads,
    kRope,
    kIndexerQueries,
    kEncodeMainEntries,
    kAddApe,
    kCompress,
    kIndexerTopK,
    kAttention,
    kStoreWindow,
    kRouteExperts,
    kSwiGlu,
    kRoutedExperts,
    kSealRecords,
    kCount,
  };
  static absl::string_view OpName(Op op);

  // A linear's profile key: small and hashable, so a call allocates nothing once its shape has
  // been seen; the display string is built only in Stats().
  struct LinearKey {
    Op op;
    WeightFormat format;
    int64_t rows, cols;
    bool operator==(const LinearKey&) const = default;
    template <typename H>
    friend H AbslHashValue(H h, const LinearKey& k) {
      return H::combine(std::move(h), k.op, k.format, k.rows, k.cols);
    }
  };
  struct Totals {
    int64_t calls = 0;
    Clock::duration time{};
  };

  // Adds one call that began at `start` (and ends now).
  void Record(Op op, Clock::time_point start);
  void RecordLinear(Op op, const WeightView& w, Clock::time_point start);

  Backend& inner_;
  std::array<Totals, static_cast<size_t>(Op::kCount)> ops_{};
  absl::flat_hash_map<LinearKey, Totals> linears_;
};

}  // namespace strata::engine
