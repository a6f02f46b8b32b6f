// A scalar, obviously-correct engine::Backend for tests: every op written as the plain loops of
// its contract in engine/backend.h (MODEL.md §2–§5), one row at a time, every sum left to right
// in the order the contract states, no SIMD and no threads. So a row's result does not depend on
// how rows are batched or chunked: the model's invariance tests run on it, and every optimized
// backend's ops are compared with it (backend_ops_test.cc). Its memory is host memory.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/kv/kv_cache.h"
#include "engine/numerics.h"
#include "tests/unit/engine/reference_backend_ops.h"

namespace strata::engine::testing {

// E4M3 activation quantization of one row, per block of 128: the codes' values times the
// block's power-of-two scale, returned as floats (exactly what an FP8 linear multiplies).
inline void QuantizeActivationRow(const float* x, int64_t cols, std::vector<float>& q, std::vector<float>& scale) {
  q.assign(static_cast<size_t>(cols), 0.0f);
  scale.assign(static_cast<size_t>((cols + 127) / 128), 0.0f);
  for (int64_t b = 0; b * 128 < cols; ++b) {
    const int64_t end = std::min(cols, b * 128 + 128);
    float amax = 0;
    for (int64_t i = b * 128; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    const int e = PowerOfTwoScaleExponent(amax, kE4M3Max, 1e-4f);
    scale[static_cast<size_t>(b)] = std::ldexp(1.0f, e);
    for (int64_t i = b * 128; i < end; ++i) q[static_cast<size_t>(i)] = E4M3ToFloat(FloatToE4M3(x[i] * std::ldexp(1.0f, -e)));
  }
}

class ReferenceBackend : public Backend {
 public:
  absl::string_view name() const override { return "reference"; }

  // ---- Memory: plain host memory ---------------------------------------------------------------
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate(", bytes, ")"));
    // aligned_alloc wants a multiple of the alignment; never 0 so that a pointer comes back.
    const size_t size = static_cast<size_t>(std::max<int64_t>(64, (bytes + 63) / 64 * 64));
    void* ptr = std::aligned_alloc(64, size);
    if (ptr == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("reference backend: cannot allocate ", bytes, " bytes"));
    }
    return ptr;
  }
  void Free(void* ptr) override { std::free(ptr); }
  void ToDevice(void* dst, const void* host_src, int64_t bytes) override {
    Copy(dst, host_src, bytes);
  }
  void ToHost(void* host_dst, const void* src, int64_t bytes) override {
    Copy(host_dst, src, bytes);
  }
  void Copy(void* dst, const void* src, int64_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  }
  void Zero(void* dst, int64_t bytes) override {
    if (bytes > 0) std::memset(dst, 0, static_cast<size_t>(bytes));
  }
  bool host_memory() const override { return true; }
  void SealRecords(absl::Span<const KvRecordSeal> seals) override {
    for (const KvRecordSeal& s : seals) {
      SealKvRecord(s.record, s.bytes, static_cast<KvRecordKind>(s.kind), s.fingerprint, s.tokens);
    }
  }
  absl::StatusOr<const void*> MakeResident(const void* host, int64_t /*bytes*/) override {
    return host;
  }

  // ---- Dense ops ------------------------------------------------------------------------------
  void Linear(const WeightView& w, const float* x, int64_t n, float* y) override {
    std::vector<float> q, sx;
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x + r * w.cols;
      float* yr = y + r * w.rows;
      if (w.format == WeightFormat::kBf16 || w.format == WeightFormat::kF32) {
        for (int64_t o = 0; o < w.rows; ++o) {
          float sum = 0;
          for (int64_t i = 0; i < w.cols; ++i) sum += xr[i] * Weight(w, o, i);
          yr[o] = sum;
        }
        continue;
      }
      QuantizeActivationRow(xr, w.cols, q, sx);
      for (int64_t o = 0; o < w.rows; ++o) {
        float total = 0;
        for (int64_t b = 0; b * 128 < w.cols; ++b) {
          float sum = 0;
          for (int64_t i = b * 128; i < std::min(w.cols, b * 128 + 128); ++i) sum += q[static_cast<size_t>(i)] * Weight(w, o, i);
          total += sum * sx[static_cast<size_t>(b)];
        }
        yr[o] = total;
      }
    }
  }

  // The dequantized weight W[o][i] (for FP8 including its block scale; for FP4 its 32-scale).
  static float Weight(const WeightView& w, int64_t o, int64_t i) {
    switch (w.format) {
      case WeightFormat::kBf16: return Bf16ToFloat(static_cast<const uint16_t*>(w.data)[o * w.cols + i]);
      case WeightFormat::kF32: return static_cast<const float*>(w.data)[o * w.cols + i];
      case WeightFormat::kFp8Block: {
        const int64_t scols = (w.cols + 127) / 128;
        return E4M3ToFloat(static_cast<const uint8_t*>(w.data)[o * w.cols + i]) *
               Ue8m0ToFloat(w.scale[(o / 128) * scols + i / 128]);
      }
      case WeightFormat::kFp4Block:
        return PackedE2M1At(static_cast<const uint8_t*>(w.data) + o * (w.cols / 2), i) *
               Ue8m0ToFloat(w.scale[o * (w.cols / 32) + i / 32]);
    }
    return 0;
  }

  void GroupedLinear(const WeightView& w, int64_t groups, const float* x, int64_t n,
                     float* y) override {
    const int64_t rows_g = w.rows / groups, cols_g = w.cols;
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t g = 0; g < groups; ++g) {
        const float* xg = x + t * groups * cols_g + g * cols_g;
        for (int64_t i = 0; i < rows_g; ++i) {
          float sum = 0;
          for (int64_t k = 0; k < cols_g; ++k) sum += Weight(w, g * rows_g + i, k) * xg[k];
          y[t * w.rows + g * rows_g + i] = sum;
        }
      }
    }
  }

  void Embed(const uint16_t* table, int64_t d, const int32_t* ids, int64_t n, int64_t copies,
             float* out) override {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t c = 0; c < copies; ++c) {
        for (int64_t k = 0; k < d; ++k) {
          out[(t * copies + c) * d + k] = Bf16ToFloat(table[static_cast<int64_t>(ids[t]) * d + k]);
        }
      }
    }
  }

  void RmsNorm(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
               float* out) override {
    for (int64_t r = 0; r < rows; ++r) ref::RmsNormRow(x + r * dim, w, dim, eps, out + r * dim);
  }

  void RoundBf16(float* x, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) x[i] = ref::Bf16(x[i]);
  }
  void ScaleBf16(float* x, int64_t n, float factor) override {
    for (int64_t i = 0; i < n; ++i) x[i] = ref::Bf16(ref::Bf16(x[i]) * factor);
  }
  void AddBf16(const float* a, const float* b, int64_t n, float* out) override {
    for (int64_t i = 0; i < n; ++i) out[i] = ref::Bf16(a[i] + b[i]);
  }
  void GatherRows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                  float* dst) override {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < width; ++k)
        dst[i * width + k] = src[static_cast<int64_t>(idx[i]) * width + k];
    }
  }

  // ---- mHC ------------------------------------------------------------------------------------
  void HcPre(const HcParams& p, const float* streams, int64_t rows, float* mix,
             float* x_out) override {
    const int64_t hc = p.hc, d = p.d, n = hc * d;
    std::vector<float> mu(static_cast<size_t>(p.mix));
    for (int64_t t = 0; t < rows; ++t) {
      const float* x = streams + t * n;
      Mu(p, x, mu.data());
      float* m = mix + t * p.mix;
      float* pre = m;
      float* post = m + hc;
      float* c = m + 2 * hc;
      for (int64_t i = 0; i < hc; ++i) {
        pre[i] = ref::Sigmoid(mu[i] * p.scale[0] + p.base[i]) + p.hc_eps;
        post[i] = 2.0f * ref::Sigmoid(mu[hc + i] * p.scale[1] + p.base[hc + i]);
      }
      for (int64_t i = 0; i < hc; ++i) {  // softmax over each row, + eps
        float mx = -INFINITY;
        for (int64_t j = 0; j < hc; ++j) {
          c[i * hc + j] = mu[2 * hc + i * hc + j] * p.scale[2] + p.base[2 * hc + i * hc + j];
          mx = std::max(mx, c[i * hc + j]);
        }
        float sum = 0;
        for (int64_t j = 0; j < hc; ++j) {
          c[i * hc + j] = std::exp(c[i * hc + j] - mx);
          sum += c[i * hc + j];
        }
        for (int64_t j = 0; j < hc; ++j) c[i * hc + j] = c[i * hc + j] / sum + p.hc_eps;
      }
      NormalizeColumns(c, hc, p.hc_eps);
      for (int64_t it = 1; it < p.sinkhorn_iters; ++it) {
        NormalizeRows(c, hc, p.hc_eps);
        NormalizeColumns(c, hc, p.hc_eps);
      }
      WeightedStreams(pre, x, hc, d, x_out + t * d);
    }
  }

  void HcPost(const HcParams& p, const float* mix, const float* y, int64_t rows,
              float* streams) override {
    const int64_t hc = p.hc, d = p.d;
    std::vector<float> old(static_cast<size_t>(hc * d));
    for (int64_t t = 0; t < rows; ++t) {
      float* x = streams + t * hc * d;
      std::copy(x, x + hc * d, old.begin());
      const float* post = mix + t * p.mix + hc;
      const float* comb = mix + t * p.mix + 2 * hc;
      for (int64_t j = 0; j < hc; ++j) {
        for (int64_t k = 0; k < d; ++k) {
          float sum = post[j] * y[t * d + k];
          for (int64_t i = 0; i < hc; ++i) sum += comb[i * hc + j] * old[i * d + k];
          x[j * d + k] = ref::Bf16(sum);
        }
      }
    }
  }

  void HcHead(const HcParams& p, const float* streams, int64_t rows, float* out) override {
    const int64_t hc = p.hc, d = p.d;
    std::vector<float> mu(static_cast<size_t>(p.mix)), pre(static_cast<size_t>(hc));
    for (int64_t t = 0; t < rows; ++t) {
      const float* x = streams + t * hc * d;
      Mu(p, x, mu.data());  // ρ·(W_fn x̂)
      for (int64_t i = 0; i < hc; ++i)
        pre[i] = ref::Sigmoid(mu[i] * p.scale[0] + p.base[i]) + p.hc_eps;
      WeightedStreams(pre.data(), x, hc, d, out + t * d);
    }
  }

  // ---- Attention ------------------------------------------------------------------------------
  void QueryHeads(float* q, int64_t rows, int64_t heads, int64_t dim, float eps,
                  const RopeTable& rope, const int64_t* positions) override {
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        float* u = q + (t * heads + h) * dim;
        for (int64_t i = 0; i < dim; ++i) u[i] = ref::Bf16(u[i]);
        float sum = 0;
        for (int64_t i = 0; i < dim; ++i) sum += ref::Bf16(u[i] * u[i]);
        float s = ref::Bf16(sum / static_cast<float>(dim));
        s = ref::Bf16(s + eps);
        const float g = ref::Bf16(1.0f / std::sqrt(s));
        for (int64_t i = 0; i < dim; ++i) u[i] = ref::Bf16(u[i] * g);
        ref::RopeRow(u + dim - rope.dim, rope, positions[t], /*inverse=*/false);
      }
    }
  }

  void Rope(float* x, int64_t rows, int64_t stride, const RopeTable& rope,
            const int64_t* positions) override {
    for (int64_t t = 0; t < rows; ++t) {
      ref::RopeRow(x + t * stride + stride - rope.dim, rope, positions[t], /*inverse=*/false);
    }
  }

  void IndexerQueries(float* q, int64_t rows, int64_t heads, int64_t dim, const RopeTable& rope,
                      const int64_t* positions) override {
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        float* u = q + (t * heads + h) * dim;
        for (int64_t i = 0; i < dim; ++i) u[i] = ref::Bf16(u[i]);
        ref::RopeRow(u + dim - rope.dim, rope, positions[t], /*inverse=*/false);
        ref::HadamardRow(u, dim);
        ref::SimulateFp4Row(u, dim);
      }
    }
  }

  void EncodeMainEntries(float* v, int64_t rows, const KvEntryFormat& f, uint8_t* out) override {
    for (int64_t t = 0; t < rows; ++t)
      ref::EncodeMainEntry(v + t * (f.nope + f.rope), f, out + t * f.main_bytes);
  }

  void AddApe(float* z, int64_t rows, int64_t width, const float* ape, int64_t ratio,
              const int64_t* positions) override {
    for (int64_t t = 0; t < rows; ++t) {
      const float* row = ape + (positions[t] % ratio) * width;
      for (int64_t i = 0; i < width; ++i) z[t * width + i] += row[i];
    }
  }

  void Compress(const StepBatch& step, const CompressorParams& p, const KvEntryFormat& f,
                const float* a, const float* z, const KvPoolView& pool) override {
    ref::Compress(step, p, f, a, z, pool);
  }

  void IndexerTopK(const StepBatch& step, const IndexerParams& p, const KvEntryFormat& f,
                   const float* q, const float* w, const KvPoolView& pool, int32_t* chosen,
                   int32_t* count) override {
    ref::IndexerTopK(step, p, f, q, w, pool, chosen, count);
  }

  void Attention(const StepBatch& step, const AttentionParams& p, const KvEntryFormat& f,
                 const float* q, const float* kv, const int32_t* chosen, const int32_t* count,
                 const KvPoolView& pool, float* o) override {
    ref::Attention(step, p, f, q, kv, chosen, count, pool, o);
  }

  void StoreWindow(const StepBatch& step, const KvEntryFormat& f, int64_t window,
                   int64_t window_offset, const uint8_t* entries) override {
    ref::StoreWindow(step, f, window, window_offset, entries);
  }

  // ---- MoE ------------------------------------------------------------------------------------
  void RouteExperts(const RouterParams& p, const float* logits, const int32_t* tokens, int64_t rows,
                    int32_t* ids, float* weights) override {
    std::vector<float> s(static_cast<size_t>(p.experts));
    std::vector<bool> taken;
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t e = 0; e < p.experts; ++e)
        s[e] = std::sqrt(ref::Softplus(logits[t * p.experts + e]));
      int32_t* chosen = ids + t * p.k;
      if (p.tid2eid != nullptr) {
        for (int64_t j = 0; j < p.k; ++j)
          chosen[j] = p.tid2eid[static_cast<int64_t>(tokens[t]) * p.k + j];
      } else {
        // k passes of "the best expert not taken yet": decreasing s + bias, ties to the lower id.
        taken.assign(static_cast<size_t>(p.experts), false);
        for (int64_t j = 0; j < p.k; ++j) {
          int64_t best = -1;
          for (int64_t e = 0; e < p.experts; ++e) {
            if (taken[e]) continue;
            if (best < 0 || s[e] + p.bias[e] > s[best] + p.bias[best]) best = e;
          }
          taken[best] = true;
          chosen[j] = static_cast<int32_t>(best);
        }
      }
      float sum = 0;
      for (int64_t j = 0; j < p.k; ++j) sum += s[chosen[j]];
      for (int64_t j = 0; j < p.k; ++j) weights[t * p.k + j] = s[chosen[j]] / sum * p.scaling;
    }
  }

  void SwiGlu(const float* u, const float* v, int64_t rows, int64_t inter, const float* row_weights,
              float limit, float* h) override {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < inter; ++i) {
        const float ui = std::min(ref::Bf16(u[r * inter + i]), limit);
        const float vi = std::clamp(ref::Bf16(v[r * inter + i]), -limit, limit);
        const float value = ref::Silu(ui) * vi;
        h[r * inter + i] = ref::Bf16(row_weights != nullptr ? value * row_weights[r] : value);
      }
    }
  }

  absl::Status RoutedExperts(absl::Span<const ExpertWeights> experts, const float* x, int64_t rows,
                             const int32_t* ids, const float* weights, int64_t k, float limit,
                             float* out) override {
    const int64_t num = static_cast<int64_t>(experts.size());
    for (int64_t i = 0; i < rows * k; ++i) {
      if (ids[i] < 0 || ids[i] >= num) {
        return absl::InvalidArgumentError(
            absl::StrCat("row ", i / k, ": expert id ", ids[i], " is outside [0, ", num, ")"));
      }
    }
    if (num == 0) return absl::OkStatus();
    const int64_t d = experts[0].w2.rows, in = experts[0].w1.cols, inter = experts[0].w1.rows;
    std::vector<float> u(static_cast<size_t>(inter)), v(u.size()), h(u.size()),
        y(static_cast<size_t>(d));
    std::vector<int64_t> order(static_cast<size_t>(k));
    for (int64_t t = 0; t < rows; ++t) {
      // The row's experts in increasing id (a stable order for a repeated id).
      for (int64_t j = 0; j < k; ++j) order[j] = j;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return ids[t * k + a] < ids[t * k + b]; });
      float* acc = out + t * d;
      std::fill(acc, acc + d, 0.0f);
      for (int64_t j : order) {
        const ExpertWeights& e = experts[static_cast<size_t>(ids[t * k + j])];
        Linear(e.w1, x + t * in, 1, u.data());
        Linear(e.w3, x + t * in, 1, v.data());
        SwiGlu(u.data(), v.data(), 1, inter, weights + t * k + j, limit, h.data());
        Linear(e.w2, h.data(), 1, y.data());
        for (int64_t i = 0; i < d; ++i) acc[i] += ref::Bf16(y[i]);
      }
    }
    return absl::OkStatus();
  }

 private:
  // μ = ρ · (W_fn x̂) for one row of streams: the dot products and the statistic summed left to
  // right, ρ = rsqrt(mean(x̂²) + norm_eps).
  static void Mu(const HcParams& p, const float* x, float* mu) {
    const int64_t n = p.hc * p.d;
    float sq = 0;
    for (int64_t k = 0; k < n; ++k) sq += x[k] * x[k];
    const float rho = 1.0f / std::sqrt(sq / static_cast<float>(n) + p.norm_eps);
    for (int64_t i = 0; i < p.mix; ++i) {
      float sum = 0;
      for (int64_t k = 0; k < n; ++k) sum += p.fn[i * n + k] * x[k];
      mu[i] = sum * rho;
    }
  }

  // Sinkhorn steps: each column (row) divided by its sum + eps.
  static void NormalizeColumns(float* c, int64_t hc, float eps) {
    for (int64_t j = 0; j < hc; ++j) {
      float sum = 0;
      for (int64_t i = 0; i < hc; ++i) sum += c[i * hc + j];
      for (int64_t i = 0; i < hc; ++i) c[i * hc + j] /= sum + eps;
    }
  }
  static void NormalizeRows(float* c, int64_t hc, float eps) {
    for (int64_t i = 0; i < hc; ++i) {
      float sum = 0;
      for (int64_t j = 0; j < hc; ++j) sum += c[i * hc + j];
      for (int64_t j = 0; j < hc; ++j) c[i * hc + j] /= sum + eps;
    }
  }

  // out = bf16(Σ_i pre_i X_i), streams in order.
  static void WeightedStreams(const float* pre, const float* x, int64_t hc, int64_t d, float* out) {
    for (int64_t k = 0; k < d; ++k) {
      float sum = 0;
      for (int64_t i = 0; i < hc; ++i) sum += pre[i] * x[i * d + k];
      out[k] = ref::Bf16(sum);
    }
  }
};

}  // namespace strata::engine::testing
