#include "engine/profiling_backend.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata::engine {

absl::string_view ProfilingBackend::OpName(Op op) {
  switch (op) {
    case Op::kLinear:
      return "Linear";
    case Op::kGroupedLinear:
      return "GroupedLinear";
    case Op::kEmbed:
      return "Embed";
    case Op::kRmsNorm:
      return "RmsNorm";
    case Op::kRoundBf16:
      return "RoundBf16";
    case Op::kScaleBf16:
      return "ScaleBf16";
    case Op::kAddBf16:
      return "AddBf16";
    case Op::kGatherRows:
      return "GatherRows";
    case Op::kHcPre:
      return "HcPre";
    case Op::kHcPost:
      return "HcPost";
    case Op::kHcHead:
      return "HcHead";
    case Op::kQueryHeads:
      return "QueryHeads";
    case Op::kRope:
      return "Rope";
    case Op::kIndexerQueries:
      return "IndexerQueries";
    case Op::kEncodeMainEntries:
      return "EncodeMainEntries";
    case Op::kAddApe:
      return "AddApe";
    case Op::kCompress:
      return "Compress";
    case Op::kIndexerTopK:
      return "IndexerTopK";
    case Op::kAttention:
      return "Attention";
    case Op::kStoreWindow:
      return "StoreWindow";
    case Op::kRouteExperts:
      return "RouteExperts";
    case Op::kSwiGlu:
      return "SwiGlu";
    case Op::kRoutedExperts:
      return "RoutedExperts";
    case Op::kSealRecords:
      return "SealRecords";
    case Op::kCount:
      break;
  }
  return "?";
}

void ProfilingBackend::Reset() {
  ops_.fill(Totals{});
  linears_.clear();
}

std::vector<ProfilingBackend::OpStats> ProfilingBackend::Stats() const {
  auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  std::vector<OpStats> out;
  for (size_t i = 0; i < ops_.size(); ++i) {
    if (ops_[i].calls == 0) continue;
    out.push_back({std::string(OpName(static_cast<Op>(i))), ops_[i].calls, seconds(ops_[i].time)});
  }
  for (const auto& [key, totals] : linears_) {
    out.push_back(
        {absl::StrCat(OpName(key.op), " ", WeightFormatName(key.format), " [", key.rows, "x",
                      key.cols, "]"),
         totals.calls, seconds(totals.time),
         static_cast<double>(totals.calls) *
             static_cast<double>(WeightBytes(key.format, key.rows, key.cols))});
  }
  std::sort(out.begin(), out.end(), [](const OpStats& a, const OpStats& b) {
    return a.seconds != b.seconds ? a.seconds > b.seconds : a.key < b.key;
  });
  return out;
}

std::string ProfilingBackend::Report(double total_seconds) const {
  const std::vector<OpStats> stats = Stats();
  size_t width = 18;  // "other (not in ops)"
  for (const OpStats& s : stats) width = std::max(width, s.key.size());
  const int w = static_cast<int>(width);
  auto share = [&](double seconds) {
    return total_seconds > 0 ? 100 * seconds / total_seconds : 0.0;
  };
  std::string out = absl::StrFormat("    %-*s %8s %10s %7s %8s\n", w, "op", "calls", "total ms",
                                    "% time", "GB/s");
  double in_ops = 0;
  for (const OpStats& s : stats) {
    in_ops += s.seconds;
    absl::StrAppendFormat(&out, "    %-*s %8d %10.3f %6.1f%%", w, s.key, s.calls, s.seconds * 1e3,
                          share(s.seconds));
    if (s.weight_bytes > 0 && s.seconds > 0)
      absl::StrAppendFormat(&out, " %8.1f", s.weight_bytes / s.seconds / 1e9);
    out += '\n';
  }
  const double other = total_seconds - in_ops;
  absl::StrAppendFormat(&out, "    %-*s %8s %10.3f %6.1f%%\n", w, "other (not in ops)", "",
                        other * 1e3, share(other));
  return out;
}

void ProfilingBackend::Record(Op op, Clock::time_point start) {
  Totals& t = ops_[static_cast<size_t>(op)];
  t.time += Clock::now() - start;
  ++t.calls;
}

void ProfilingBackend::RecordLinear(Op op, const WeightView& w, Clock::time_point start) {
  const Clock::time_point end = Clock::now();
  Totals& t = linears_[LinearKey{op, w.format, w.rows, w.cols}];
  t.time += end - start;
  ++t.calls;
}

// ---- The timed ops: the inner backend's call between two clock reads ------------------------

void ProfilingBackend::SealRecords(absl::Span<const KvRecordSeal> seals) {
  const Clock::time_point start = Clock::now();
  inner_.SealRecords(seals);
  Record(Op::kSealRecords, start);
}

void ProfilingBackend::Linear(const WeightView& w, const float* x, int64_t n, float* y) {
  const Clock::time_point start = Clock::now();
  inner_.Linear(w, x, n, y);
  RecordLinear(Op::kLinear, w, start);
}

void ProfilingBackend::GroupedLinear(const WeightView& w, int64_t groups, const float* x, int64_t n,
                                     float* y) {
  const Clock::time_point start = Clock::now();
  inner_.GroupedLinear(w, groups, x, n, y);
  RecordLinear(Op::kGroupedLinear, w, start);
}

void ProfilingBackend::Embed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n,
                             int64_t copies, float* out) {
  const Clock::time_point start = Clock::now();
  inner_.Embed(table, d, ids, n, copies, out);
  Record(Op::kEmbed, start);
}

void ProfilingBackend::RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                               float* out) {
  const Clock::time_point start = Clock::now();
  inner_.RmsNorm(x, w, rows, dim, eps, out);
  Record(Op::kRmsNorm, start);
}

void ProfilingBackend::RoundBf16(float* x, int64_t n) {
  const Clock::time_point start = Clock::now();
  inner_.RoundBf16(x, n);
  Record(Op::kRoundBf16, start);
}

void ProfilingBackend::ScaleBf16(float* x, int64_t n, float factor) {
  const Clock::time_point start = Clock::now();
  inner_.ScaleBf16(x, n, factor);
  Record(Op::kScaleBf16, start);
}

void ProfilingBackend::AddBf16(const float* a, const float* b, int64_t n, float* out) {
  const Clock::time_point start = Clock::now();
  inner_.AddBf16(a, b, n, out);
  Record(Op::kAddBf16, start);
}

void ProfilingBackend::GatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                                  float* dst) {
  const Clock::time_point start = Clock::now();
  inner_.GatherRows(src, width, idx, n, dst);
  Record(Op::kGatherRows, start);
}

void ProfilingBackend::HcPre(const HcParams& p, const float* streams, int64_t rows, float* mix,
                             float* x_out) {
  const Clock::time_point start = Clock::now();
  inner_.HcPre(p, streams, rows, mix, x_out);
  Record(Op::kHcPre, start);
}

void ProfilingBackend::HcPost(const HcParams& p, const float* mix, const float* y, int64_t rows,
                              float* streams) {
  const Clock::time_point start = Clock::now();
  inner_.HcPost(p, mix, y, rows, streams);
  Record(Op::kHcPost, start);
}

void ProfilingBackend::HcHead(const HcParams& p, const float* streams, int64_t rows, float* out) {
  const Clock::time_point start = Clock::now();
  inner_.HcHead(p, streams, rows, out);
  Record(Op::kHcHead, start);
}

void ProfilingBackend::QueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                                  const RopeTable& rope, const int64_t* positions) {
  const Clock::time_point start = Clock::now();
  inner_.QueryHeads(q, rows, heads, dim, eps, rope, positions);
  Record(Op::kQueryHeads, start);
}

void ProfilingBackend::Rope(float* x, int64_t rows, int64_t stride, const RopeTable& rope,
                            const int64_t* positions) {
  const Clock::time_point start = Clock::now();
  inner_.Rope(x, rows, stride, rope, positions);
  Record(Op::kRope, start);
}

void ProfilingBackend::IndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim,
                                      const RopeTable& rope, const int64_t* positions) {
  const Clock::time_point start = Clock::now();
  inner_.IndexerQueries(q, rows, heads, dim, rope, positions);
  Record(Op::kIndexerQueries, start);
}

void ProfilingBackend::EncodeMainEntries(float* v, int64_t rows, const KvEntryFormat& f,
                                         uint8_t* out) {
  const Clock::time_point start = Clock::now();
  inner_.EncodeMainEntries(v, rows, f, out);
  Record(Op::kEncodeMainEntries, start);
}

void ProfilingBackend::AddApe(float* z, int64_t rows, int64_t width, const float* ape,
                              int64_t ratio, const int64_t* positions) {
  const Clock::time_point start = Clock::now();
  inner_.AddApe(z, rows, width, ape, ratio, positions);
  Record(Op::kAddApe, start);
}

void ProfilingBackend::Compress(const StepBatch& step, const CompressorParams& p,
                                const KvEntryFormat& f, const float* a, const float* z,
                                const KvPoolView& pool) {
  const Clock::time_point start = Clock::now();
  inner_.Compress(step, p, f, a, z, pool);
  Record(Op::kCompress, start);
}

void ProfilingBackend::IndexerTopK(const StepBatch& step, const IndexerParams& p,
                                   const KvEntryFormat& f, const float* q, const float* w,
                                   const KvPoolView& pool, int32_t* chosen, int32_t* count) {
  const Clock::time_point start = Clock::now();
  inner_.IndexerTopK(step, p, f, q, w, pool, chosen, count);
  Record(Op::kIndexerTopK, start);
}

void ProfilingBackend::Attention(const StepBatch& step, const AttentionParams& p,
                                 const KvEntryFormat& f, const float* q, const float* kv,
                                 const int32_t* chosen, const int32_t* count,
                                 const KvPoolView& pool, float* o) {
  const Clock::time_point start = Clock::now();
  inner_.Attention(step, p, f, q, kv, chosen, count, pool, o);
  Record(Op::kAttention, start);
}

void ProfilingBackend::StoreWindow(const StepBatch& step, const KvEntryFormat& f, int64_t window,
                                   int64_t window_offset, const uint8_t* entries) {
  const Clock::time_point start = Clock::now();
  inner_.StoreWindow(step, f, window, window_offset, entries);
  Record(Op::kStoreWindow, start);
}

void ProfilingBackend::RouteExperts(const RouterParams& p, const float* logits,
                                    const int32_t* tokens, int64_t rows, int32_t* ids,
                                    float* weights) {
  const Clock::time_point start = Clock::now();
  inner_.RouteExperts(p, logits, tokens, rows, ids, weights);
  Record(Op::kRouteExperts, start);
}

void ProfilingBackend::SwiGlu(const float* u, const float* v, int64_t rows, int64_t inter,
                              const float* row_weights, float limit, float* h) {
  const Clock::time_point start = Clock::now();
  inner_.SwiGlu(u, v, rows, inter, row_weights, limit, h);
  Record(Op::kSwiGlu, start);
}

absl::Status ProfilingBackend::RoutedExperts(absl::Span<const ExpertWeights> experts,
                                             const float* x, int64_t rows, const int32_t* ids,
                                             const float* weights, int64_t k, float limit,
                                             float* out) {
  const Clock::time_point start = Clock::now();
  absl::Status status = inner_.RoutedExperts(experts, x, rows, ids, weights, k, limit, out);
  Record(Op::kRoutedExperts, start);
  return status;
}

}  // namespace strata::engine
