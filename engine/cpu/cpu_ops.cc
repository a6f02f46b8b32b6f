// CpuBackend: memory, the dense elementwise ops, mHC and the MoE ops (see engine/backend.h for
// each op's contract). Rows are independent, so every op splits its rows over the pool; the
// inner loops are engine/cpu/vector_ops.h's.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_backend.h"

#include <sys/mman.h>
#include "engine/cpu/vector_ops.h"
#include "engine/kv/kv_cache.h"
#include "engine/numerics.h"

namespace strata::engine {
namespace {

constexpr int64_t kElementChunk = 1 << 14;  // elementwise ops: values per work item

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// The Sinkhorn-normalised mixes of one row from its μ (already scaled by ρ): [pre | post | comb].
void SublayerMix(const float* mu, const HcParams& p, float* mix) {
  const int64_t hc = p.hc;
  const float eps = p.hc_eps;
  const float* b = p.base;
  const float* s = p.scale;
  for (int64_t i = 0; i < hc; ++i) {
    mix[i] = Sigmoid(mu[i] * s[0] + b[i]) + eps;
    mix[hc + i] = 2.0f * Sigmoid(mu[hc + i] * s[1] + b[hc + i]);
  }
  float* c = mix + 2 * hc;
  for (int64_t i = 0; i < hc; ++i) {  // softmax over each row, + eps
    float m = -INFINITY;
    for (int64_t j = 0; j < hc; ++j) {
      c[i * hc + j] = mu[2 * hc + i * hc + j] * s[2] + b[2 * hc + i * hc + j];
      m = std::max(m, c[i * hc + j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < hc; ++j) sum += (c[i * hc + j] = std::exp(c[i * hc + j] - m));
    for (int64_t j = 0; j < hc; ++j) c[i * hc + j] = c[i * hc + j] / sum + eps;
  }
  auto normalize_cols = [&] {
    for (int64_t j = 0; j < hc; ++j) {
      float sum = 0;
      for (int64_t i = 0; i < hc; ++i) sum += c[i * hc + j];
      for (int64_t i = 0; i < hc; ++i) c[i * hc + j] /= sum + eps;
    }
  };
  auto normalize_rows = [&] {
    for (int64_t i = 0; i < hc; ++i) {
      float sum = 0;
      for (int64_t j = 0; j < hc; ++j) sum += c[i * hc + j];
      for (int64_t j = 0; j < hc; ++j) c[i * hc + j] /= sum + eps;
    }
  };
  normalize_cols();
  for (int64_t it = 1; it < p.sinkhorn_iters; ++it) {
    normalize_rows();
    normalize_cols();
  }
}

float StreamsRho(const float* x, int64_t n, float eps) {
  return 1.0f / std::sqrt(cpu::SumSquares(x, n) / static_cast<float>(n) + eps);
}

}  // namespace

// ---- Memory ---------------------------------------------------------------------------------

absl::StatusOr<void*> CpuBackend::Allocate(int64_t bytes) {
  const size_t size = static_cast<size_t>(std::max<int64_t>((bytes + 63) / 64 * 64, 64));
  void* p = std::aligned_alloc(64, size);
  if (p == nullptr)
    return absl::ResourceExhaustedError(
        absl::StrCat("CPU backend: cannot allocate ", bytes, " bytes"));
  return p;
}

void CpuBackend::Free(void* ptr) { std::free(ptr); }

void CpuBackend::ToDevice(void* dst, const void* host_src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, host_src, static_cast<size_t>(bytes));
}

void CpuBackend::ToHost(void* host_dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, src, static_cast<size_t>(bytes));
}

void CpuBackend::Copy(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memmove(dst, src, static_cast<size_t>(bytes));
}

// Weights are copied into anonymous memory backed by 2 MiB pages where the kernel gives them
// (transparent huge pages, madvise mode included): a decode step streams every weight once, and
// on 4 KiB pages of the mapped checkpoint each page is a TLB miss and a point where the hardware
// prefetchers stop (measured: +4–10% small-preset decode at batch 1). The checkpoint's pages
// become ordinary page cache the kernel may drop. Tensors are packed 64-byte aligned into chunks
// of at least kResidentChunk bytes, freed with the backend.
absl::StatusOr<const void*> CpuBackend::MakeResident(const void* host, int64_t bytes) {
  if (!options_.copy_weights || bytes <= 0) return host;
  const size_t size = static_cast<size_t>(bytes);
  if (resident_chunks_.empty() || resident_used_ + size > resident_chunks_.back().second) {
    constexpr size_t kHugePage = size_t{2} << 20;
    const size_t chunk = std::max(kResidentChunk, (size + kHugePage - 1) / kHugePage * kHugePage);
    void* p = mmap(nullptr, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("CPU backend: cannot map ", chunk, " bytes for weights: ", std::strerror(errno)));
    }
    madvise(p, chunk, MADV_HUGEPAGE);  // advice only: without THP the copy still works
    resident_chunks_.emplace_back(p, chunk);
    resident_used_ = 0;
  }
  auto* dst = static_cast<uint8_t*>(resident_chunks_.back().first) + resident_used_;
  std::memcpy(dst, host, size);
  resident_used_ += (size + 63) / 64 * 64;
  return dst;
}

void CpuBackend::Zero(void* dst, int64_t bytes) {
  if (bytes > 0) std::memset(dst, 0, static_cast<size_t>(bytes));
}

void CpuBackend::SealRecords(absl::Span<const KvRecordSeal> seals) {
  ForEachItem(static_cast<int64_t>(seals.size()), int64_t{1} << 16, [&](int, int64_t i) {
    const KvRecordSeal& s = seals[static_cast<size_t>(i)];
    SealKvRecord(s.record, s.bytes, static_cast<KvRecordKind>(s.kind), s.fingerprint, s.tokens);
  });
}

// ---- Dense ops ----------------------------------------------------------------------------------

void CpuBackend::GroupedLinear(const WeightView& w, int64_t groups, const float* x, int64_t n,
                               float* y) {
  const int64_t rows_g = w.rows / groups, cols = w.cols;
  const int64_t element = w.format == WeightFormat::kF32 ? 4 : 2;
  std::vector<float> xg(static_cast<size_t>(n * cols)), yg(static_cast<size_t>(n * rows_g));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(xg.data() + t * cols, x + (t * groups + g) * cols, static_cast<size_t>(cols) * 4);
    }
    WeightView wg = w;
    wg.data = static_cast<const uint8_t*>(w.data) + g * rows_g * cols * element;
    wg.rows = rows_g;
    Linear(wg, xg.data(), n, yg.data());
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(y + (t * groups + g) * rows_g, yg.data() + t * rows_g,
                  static_cast<size_t>(rows_g) * 4);
    }
  }
}

void CpuBackend::Embed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n,
                       int64_t copies, float* out) {
  ForEachItem(n, d * copies, [&](int, int64_t t) {
    const uint16_t* src = table + static_cast<int64_t>(ids[t]) * d;
    float* dst = out + t * copies * d;
    for (int64_t k = 0; k < d; ++k) dst[k] = Bf16ToFloat(src[k]);
    for (int64_t c = 1; c < copies; ++c) std::memcpy(dst + c * d, dst, static_cast<size_t>(d) * 4);
  });
}

void CpuBackend::RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                         float* out) {
  ForEachItem(rows, dim * 4, [&](int, int64_t r) {
    thread_local std::vector<float> u;
    u.assign(x + r * dim, x + (r + 1) * dim);
    cpu::RoundBf16(u.data(), dim);
    const float inv =
        1.0f / std::sqrt(cpu::SumSquares(u.data(), dim) / static_cast<float>(dim) + eps);
    cpu::ScaleRoundBf16(u.data(), inv, w, dim, out + r * dim);
  });
}

void CpuBackend::RoundBf16(float* x, int64_t n) {
  ForEachItem((n + kElementChunk - 1) / kElementChunk, kElementChunk, [&](int, int64_t i) {
    cpu::RoundBf16(x + i * kElementChunk, std::min(kElementChunk, n - i * kElementChunk));
  });
}

void CpuBackend::ScaleBf16(float* x, int64_t n, float factor) {
  ForEachItem((n + kElementChunk - 1) / kElementChunk, kElementChunk, [&](int, int64_t i) {
    float* p = x + i * kElementChunk;
    const int64_t len = std::min(kElementChunk, n - i * kElementChunk);
    cpu::RoundBf16(p, len);
    for (int64_t k = 0; k < len; ++k) p[k] *= factor;
    cpu::RoundBf16(p, len);
  });
}

void CpuBackend::AddBf16(const float* a, const float* b, int64_t n, float* out) {
  ForEachItem((n + kElementChunk - 1) / kElementChunk, kElementChunk, [&](int, int64_t i) {
    const int64_t at = i * kElementChunk, len = std::min(kElementChunk, n - at);
    for (int64_t k = 0; k < len; ++k) out[at + k] = a[at + k] + b[at + k];
    cpu::RoundBf16(out + at, len);
  });
}

void CpuBackend::GatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                            float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    std::memmove(dst + i * width, src + static_cast<int64_t>(idx[i]) * width,
                 static_cast<size_t>(width) * 4);
  }
}

// ---- mHC ----------------------------------------------------------------------------------------

void CpuBackend::HcPre(const HcParams& p, const float* streams, int64_t rows, float* mix,
                       float* x_out) {
  const int64_t n = p.hc * p.d;
  float* mu = mix;  // μ is computed in place of the mixes, one row at a time below
  Linear(WeightView{WeightFormat::kF32, p.fn, nullptr, p.mix, n}, streams, rows, mu);
  ForEachItem(rows, n * 2, [&](int, int64_t t) {
    const float* x = streams + t * n;
    float row_mu[64];
    float* m = p.mix <= 64 ? row_mu : nullptr;
    std::vector<float> big;
    if (m == nullptr) {
      big.resize(static_cast<size_t>(p.mix));
      m = big.data();
    }
    const float rho = StreamsRho(x, n, p.norm_eps);
    for (int64_t i = 0; i < p.mix; ++i) m[i] = mu[t * p.mix + i] * rho;
    float* out_mix = mix + t * p.mix;
    SublayerMix(m, p, out_mix);
    const float* stream_rows[16];
    for (int64_t i = 0; i < p.hc; ++i) stream_rows[i] = x + i * p.d;
    cpu::MixRowsBf16(out_mix, stream_rows, p.hc, p.d, x_out + t * p.d);
  });
}

void CpuBackend::HcPost(const HcParams& p, const float* mix, const float* y, int64_t rows,
                        float* streams) {
  const int64_t hc = p.hc, d = p.d;
  ForEachItem(rows, hc * hc * d, [&](int, int64_t t) {
    float* x = streams + t * hc * d;
    const float* m = mix + t * p.mix;
    thread_local std::vector<float> next;
    next.resize(static_cast<size_t>(hc * d));
    const float* sources[17];
    sources[0] = y + t * d;
    for (int64_t i = 0; i < hc; ++i) sources[i + 1] = x + i * d;
    for (int64_t j = 0; j < hc; ++j) {
      float coef[17];
      coef[0] = m[hc + j];
      for (int64_t i = 0; i < hc; ++i) coef[i + 1] = m[2 * hc + i * hc + j];
      cpu::MixRowsBf16(coef, sources, hc + 1, d, next.data() + j * d);
    }
    std::memcpy(x, next.data(), static_cast<size_t>(hc * d) * 4);
  });
}

void CpuBackend::HcHead(const HcParams& p, const float* streams, int64_t rows, float* out) {
  const int64_t n = p.hc * p.d;
  op_scratch_.resize(static_cast<size_t>(rows * p.mix));
  float* mu = op_scratch_.data();
  Linear(WeightView{WeightFormat::kF32, p.fn, nullptr, p.mix, n}, streams, rows, mu);
  ForEachItem(rows, n * 2, [&](int, int64_t t) {
    const float* x = streams + t * n;
    const float rho = StreamsRho(x, n, p.norm_eps);
    float pre[16];
    const float* stream_rows[16];
    for (int64_t j = 0; j < p.hc; ++j) {
      pre[j] = Sigmoid(mu[t * p.mix + j] * rho * p.scale[0] + p.base[j]) + p.hc_eps;
      stream_rows[j] = x + j * p.d;
    }
    cpu::MixRowsBf16(pre, stream_rows, p.hc, p.d, out + t * p.d);
  });
}

// ---- MoE ----------------------------------------------------------------------------------------

void CpuBackend::RouteExperts(const RouterParams& p, const float* logits, const int32_t* tokens,
                              int64_t rows, int32_t* ids, float* weights) {
  const int64_t E = p.experts, k = p.k;
  ForEachItem(rows, E * 16, [&](int, int64_t t) {
    thread_local std::vector<float> s;
    thread_local std::vector<int32_t> order;
    s.resize(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e)
      s[static_cast<size_t>(e)] = std::sqrt(Softplus(logits[t * E + e]));
    int32_t* chosen = ids + t * k;
    if (p.tid2eid != nullptr) {
      std::copy_n(p.tid2eid + static_cast<int64_t>(tokens[t]) * k, k, chosen);
    } else {
      order.resize(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) order[static_cast<size_t>(e)] = static_cast<int32_t>(e);
      auto biased = [&](int32_t e) { return s[static_cast<size_t>(e)] + p.bias[e]; };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        const float ba = biased(a), bb = biased(b);
        return ba != bb ? ba > bb : a < b;  // ties: the lower expert id first
      });
      std::copy_n(order.begin(), k, chosen);
    }
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += s[static_cast<size_t>(chosen[j])];
    for (int64_t j = 0; j < k; ++j)
      weights[t * k + j] = s[static_cast<size_t>(chosen[j])] / sum * p.scaling;
  });
}

void CpuBackend::SwiGlu(const float* u, const float* v, int64_t rows, int64_t inter,
                        const float* row_weights, float limit, float* h) {
  ForEachItem(rows, inter * 8, [&](int, int64_t r) {
    for (int64_t i = 0; i < inter; ++i) {
      const int64_t idx = r * inter + i;
      const float ui = std::min(RoundToBf16(u[idx]), limit);
      const float vi = std::clamp(RoundToBf16(v[idx]), -limit, limit);
      const float silu = ui * Sigmoid(ui);
      h[idx] = RoundToBf16(row_weights != nullptr ? silu * vi * row_weights[r] : silu * vi);
    }
  });
}

absl::Status CpuBackend::RoutedExperts(absl::Span<const ExpertWeights> experts, const float* x,
                                       int64_t rows, const int32_t* ids, const float* weights,
                                       int64_t k, float limit, float* out) {
  const int64_t num_experts = static_cast<int64_t>(experts.size());
  if (rows == 0) return absl::OkStatus();
  const int64_t d = experts[0].w2.rows, inter = experts[0].w1.rows;
  // Every active expert's rows in consecutive slots, experts in id order, each expert's rows in row
  // order (a counting sort: expert e has slots [first[e], first[e + 1]), slot i holds row
  // slot_row[i]): xs [slots][d] → u, v [slots][inter] → h (over u) → ys [slots][d], with ws
  // [slots] the routing weights.
  const int64_t slots = rows * k;
  std::vector<int64_t>& first = expert_first_;
  first.assign(static_cast<size_t>(num_experts + 1), 0);
  for (int64_t i = 0; i < slots; ++i) {
    const int32_t e = ids[i];
    if (e < 0 || e >= num_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert id ", e, " out of range (the layer has ", num_experts, " experts)"));
    }
    ++first[static_cast<size_t>(e) + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) first[e + 1] += first[e];
  op_scratch_.resize(static_cast<size_t>(slots * (2 * d + 2 * inter + 1)));
  float* xs = op_scratch_.data();
  float* u = xs + slots * d;
  float* v = u + slots * inter;
  float* ys = v + slots * inter;
  float* ws = ys + slots * d;
  std::vector<int64_t>& slot_row = expert_slot_row_;
  slot_row.resize(static_cast<size_t>(slots));
  expert_next_.assign(first.begin(), first.end() - 1);
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t slot = expert_next_[static_cast<size_t>(ids[t * k + j])]++;
      slot_row[static_cast<size_t>(slot)] = t;
      ws[slot] = weights[t * k + j];
      std::memcpy(xs + slot * d, x + t * d, static_cast<size_t>(d) * 4);
    }
  }
  // The experts' linears: those Linear would run in the dot form (every one at decode) go in
  // one parallel pass per stage (LinearFp4Batch: the same bits), the others one by one.
  auto add = [&](const WeightView& w, const float* in, int64_t m, float* y) {
    if (UsesBatchedDot(w, m)) {
      expert_jobs_.push_back(LinearJob{&w, in, m, y});
    } else {
      Linear(w, in, m, y);
    }
  };
  expert_jobs_.clear();
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t at = first[e], m = first[e + 1] - at;
    if (m == 0) continue;
    const ExpertWeights& ew = experts[static_cast<size_t>(e)];
    add(ew.w1, xs + at * d, m, u + at * inter);
    add(ew.w3, xs + at * d, m, v + at * inter);
  }
  LinearFp4Batch(expert_jobs_);
  SwiGlu(u, v, slots, inter, ws, limit, u);
  expert_jobs_.clear();
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t at = first[e], m = first[e + 1] - at;
    if (m > 0) add(experts[static_cast<size_t>(e)].w2, u + at * inter, m, ys + at * d);
  }
  LinearFp4Batch(expert_jobs_);
  // Sum in expert order, each expert's output rounded to BF16 first.
  std::fill(out, out + rows * d, 0.0f);
  for (int64_t slot = 0; slot < slots; ++slot) {
    float* dst = out + slot_row[static_cast<size_t>(slot)] * d;
    const float* src = ys + slot * d;
    for (int64_t c = 0; c < d; ++c) dst[c] += RoundToBf16(src[c]);
  }
  return absl::OkStatus();
}

}  // namespace strata::engine
