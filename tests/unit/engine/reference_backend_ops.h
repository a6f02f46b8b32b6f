// The scalar building blocks of ReferenceBackend (reference_backend.h): the KV entry codecs,
// RoPE, the Walsh–Hadamard rotation, RMSNorm, and the ops that read a sequence's past (the
// compressors, the lightning indexer, attention, the window ring). Each is the plain loop the
// contract in engine/backend.h writes down, one row at a time, every sum left to right in the
// order the contract names, so that a row's result never depends on the other rows of a call.
// Tests use the codecs directly to fill a fake KV pool with valid entries.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "engine/backend.h"
#include "engine/numerics.h"

namespace strata::engine::testing::ref {

// Every page of the KV pool covers 128 positions (engine/kv/kv_layout.h, kBlockTokens).
inline constexpr int64_t kBlockPositions = 128;
// Amax floors of the KV simulation (MODEL.md §2).
inline constexpr float kFp8AmaxFloor = 1e-4f;
inline const float kFp4AmaxFloor = 6.0f * std::ldexp(1.0f, -126);

inline float Bf16(float v) { return RoundToBf16(v); }
inline float Pow2(int e) { return std::ldexp(1.0f, e); }
inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float Silu(float x) { return x * Sigmoid(x); }
// torch.nn.functional.softplus with its default threshold 20, as the reference's sqrtsoftplus.
inline float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }
// fp32(1/sqrt(n)): the exact value rounded once (the FP32 form 1.0f/sqrtf(n) gives the same
// bits for the powers of two the model uses, but this is the one the contract names).
inline float InverseSqrt(int64_t n) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
}

// ---- norms, rotations -------------------------------------------------------------------------

// out = bf16(u · rsqrt(mean(u²) + eps) · w) with u = bf16(x); the statistic in FP32, summed
// left to right. out may alias x.
inline void RmsNormRow(const float* x, const float* w, int64_t dim, float eps, float* out) {
  std::vector<float> u(static_cast<size_t>(dim));
  for (int64_t i = 0; i < dim; ++i) u[i] = Bf16(x[i]);
  float sum = 0;
  for (int64_t i = 0; i < dim; ++i) sum += u[i] * u[i];
  const float r = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = Bf16(u[i] * r * w[i]);
}

// RoPE of the rope.dim values at x: pair (x[2j], x[2j+1]) rotates by a = fp32(t·f_j) (−a for the
// inverse), cos/sin of that FP32 angle, each result rounded to BF16.
inline void RopeRow(float* x, const RopeTable& rope, int64_t position, bool inverse) {
  const float t = static_cast<float>(position);
  for (int64_t j = 0; j < rope.dim / 2; ++j) {
    const float angle = t * rope.freqs[j];
    const float a = inverse ? -angle : angle;
    const float c = std::cos(a), s = std::sin(a);
    const float x0 = x[2 * j], x1 = x[2 * j + 1];
    x[2 * j] = Bf16(x0 * c - x1 * s);
    x[2 * j + 1] = Bf16(x0 * s + x1 * c);
  }
}

// The normalised Walsh–Hadamard rotation: the in-place FP32 butterfly for h = 1, 2, 4, … < dim
// over the pairs (j, j+h) with j mod 2h < h, then x = bf16(x · fp32(1/sqrt(dim))).
inline void HadamardRow(float* x, int64_t dim) {
  for (int64_t h = 1; h < dim; h *= 2) {
    for (int64_t j = 0; j < dim; ++j) {
      if (j % (2 * h) >= h) continue;
      const float a = x[j], b = x[j + h];
      x[j] = a + b;
      x[j + h] = a - b;
    }
  }
  const float scale = InverseSqrt(dim);
  for (int64_t j = 0; j < dim; ++j) x[j] = Bf16(x[j] * scale);
}

// ---- KV entry codecs (engine/backend.h, KvEntryFormat) ----------------------------------------

// [nope × E4M3][nope/64 × UE8M0][rope × BF16][zeros to main_bytes]; v becomes the decoded values.
inline void EncodeMainEntry(float* v, const KvEntryFormat& f, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(f.main_bytes));
  uint8_t* scales = out + f.nope;
  for (int64_t b = 0; b < f.nope / 64; ++b) {
    float amax = 0;
    for (int64_t i = b * 64; i < b * 64 + 64; ++i) amax = std::max(amax, std::fabs(v[i]));
    const int e = PowerOfTwoScaleExponent(amax, kE4M3Max, kFp8AmaxFloor);
    scales[b] = Ue8m0FromExponent(e);
    for (int64_t i = b * 64; i < b * 64 + 64; ++i) {
      out[i] = FloatToE4M3(v[i] * Pow2(-e));
      v[i] = E4M3ToFloat(out[i]) * Pow2(e);
    }
  }
  uint8_t* rope = scales + f.nope / 64;
  for (int64_t i = 0; i < f.rope; ++i) {
    const uint16_t bits = FloatToBf16(v[f.nope + i]);
    std::memcpy(rope + 2 * i, &bits, 2);
    v[f.nope + i] = Bf16ToFloat(bits);
  }
}

inline void DecodeMainEntry(const uint8_t* in, const KvEntryFormat& f, float* v) {
  const uint8_t* scales = in + f.nope;
  for (int64_t i = 0; i < f.nope; ++i) v[i] = E4M3ToFloat(in[i]) * Ue8m0ToFloat(scales[i / 64]);
  const uint8_t* rope = scales + f.nope / 64;
  for (int64_t i = 0; i < f.rope; ++i) {
    uint16_t bits;
    std::memcpy(&bits, rope + 2 * i, 2);
    v[f.nope + i] = Bf16ToFloat(bits);
  }
}

// [dim/2 × packed E2M1][dim/32 × UE8M0][zeros to bytes]; v becomes the decoded values.
inline void EncodeIndexerEntry(float* v, int64_t dim, int64_t bytes, uint8_t* out) {
  std::memset(out, 0, static_cast<size_t>(bytes));
  uint8_t* scales = out + dim / 2;
  for (int64_t b = 0; b < dim / 32; ++b) {
    float amax = 0;
    for (int64_t i = b * 32; i < b * 32 + 32; ++i) amax = std::max(amax, std::fabs(v[i]));
    const int e = PowerOfTwoScaleExponent(amax, kE2M1Max, kFp4AmaxFloor);
    scales[b] = Ue8m0FromExponent(e);
    for (int64_t i = b * 32; i < b * 32 + 32; ++i) {
      const uint8_t code = FloatToE2M1(v[i] * Pow2(-e));
      out[i / 2] |= static_cast<uint8_t>(i % 2 == 0 ? code : code << 4);
      v[i] = E2M1ToFloat(code) * Pow2(e);
    }
  }
}

inline void DecodeIndexerEntry(const uint8_t* in, int64_t dim, float* v) {
  for (int64_t i = 0; i < dim; ++i) v[i] = PackedE2M1At(in, i) * Ue8m0ToFloat(in[dim / 2 + i / 32]);
}

// Simulated FP4 (blocks of 32): the decoded values of the indexer encoding.
inline void SimulateFp4Row(float* v, int64_t dim) {
  std::vector<uint8_t> scratch(static_cast<size_t>(dim / 2 + dim / 32));
  EncodeIndexerEntry(v, dim, static_cast<int64_t>(scratch.size()), scratch.data());
}

// Entry j of a layer's page in sequence s's blocks: a page holds 128 / ratio entries.
inline uint8_t* PageEntry(const KvPoolView& pool, const StepSequence& s, int64_t page_offset,
                          int64_t ratio, int64_t entry_bytes, int64_t j) {
  const int64_t per_block = kBlockPositions / ratio;
  return pool.base + static_cast<int64_t>(s.blocks[j / per_block]) * pool.block_bytes +
         page_offset + (j % per_block) * entry_bytes;
}

// ---- the ops over a sequence's past -----------------------------------------------------------

inline void Compress(const StepBatch& step, const CompressorParams& p, const KvEntryFormat& f,
                     const float* a, const float* z, const KvPoolView& pool) {
  const int64_t m = p.ratio, width = p.width;
  const int64_t out_dim = m == 4 ? width / 2 : width;
  const int64_t entry_bytes = p.indexer ? f.index_bytes : f.main_bytes;
  for (const StepSequence& s : step.host_seqs) {
    // The [a row | z row] of position q: the step's rows for new positions, else the carry ring
    // (which still holds the positions before the step: it is written after every entry).
    const float* ring = reinterpret_cast<const float*>(s.state + p.carry_offset);
    auto a_row = [&](int64_t q) {
      return q >= s.start ? a + (s.row + q - s.start) * width
                          : ring + (q % p.carry_rows) * 2 * width;
    };
    auto z_row = [&](int64_t q) {
      return q >= s.start ? z + (s.row + q - s.start) * width
                          : ring + (q % p.carry_rows) * 2 * width + width;
    };
    std::vector<float> entry(static_cast<size_t>(out_dim)), cand_a, cand_z, e;
    for (int64_t last = s.start; last < s.start + s.n; ++last) {
      if ((last + 1) % m != 0) continue;
      const int64_t g = last / m;
      for (int64_t ch = 0; ch < out_dim; ++ch) {
        cand_a.clear();
        cand_z.clear();
        if (m == 4 && g > 0) {  // the previous group first, channels [0, out)
          for (int64_t q = (g - 1) * m; q < g * m; ++q) {
            cand_a.push_back(a_row(q)[ch]);
            cand_z.push_back(z_row(q)[ch]);
          }
        }
        const int64_t offset = m == 4 ? out_dim : 0;
        for (int64_t q = g * m; q < (g + 1) * m; ++q) {
          cand_a.push_back(a_row(q)[offset + ch]);
          cand_z.push_back(z_row(q)[offset + ch]);
        }
        float mx = -INFINITY;
        for (float v : cand_z) mx = std::max(mx, v);
        e.assign(cand_z.size(), 0.0f);
        float sum = 0;
        for (size_t i = 0; i < cand_z.size(); ++i) {
          e[i] = std::exp(cand_z[i] - mx);
          sum += e[i];
        }
        float acc = 0;
        for (size_t i = 0; i < cand_a.size(); ++i) acc += (e[i] / sum) * cand_a[i];
        entry[ch] = Bf16(acc);
      }
      RmsNormRow(entry.data(), p.norm, out_dim, p.norm_eps, entry.data());
      RopeRow(entry.data() + out_dim - p.rope.dim, p.rope, g * m, /*inverse=*/false);
      uint8_t* dst = PageEntry(pool, s, p.entry_offset, m, entry_bytes, g);
      if (p.indexer) {
        HadamardRow(entry.data(), out_dim);
        EncodeIndexerEntry(entry.data(), f.index_dim, f.index_bytes, dst);
      } else {
        EncodeMainEntry(entry.data(), f, dst);
      }
    }
    float* ring_out = reinterpret_cast<float*>(s.state + p.carry_offset);
    for (int64_t i = std::max<int64_t>(0, s.n - p.carry_rows); i < s.n; ++i) {
      float* dst = ring_out + ((s.start + i) % p.carry_rows) * 2 * width;
      std::memcpy(dst, a + (s.row + i) * width, static_cast<size_t>(width) * sizeof(float));
      std::memcpy(dst + width, z + (s.row + i) * width, static_cast<size_t>(width) * sizeof(float));
    }
  }
}

inline void IndexerTopK(const StepBatch& step, const IndexerParams& p, const KvEntryFormat& f,
                        const float* q, const float* w, const KvPoolView& pool, int32_t* chosen,
                        int32_t* count) {
  std::vector<float> key(static_cast<size_t>(p.dim)), scores;
  std::vector<int32_t> order;
  for (int64_t t = 0; t < step.rows; ++t) {
    const StepSequence& s = step.seqs[step.seq_of_row[t]];
    const int64_t visible = (step.positions[t] + 1) / 4;
    scores.assign(static_cast<size_t>(visible), 0.0f);
    for (int64_t j = 0; j < visible; ++j) {
      DecodeIndexerEntry(PageEntry(pool, s, p.entry_offset, 4, f.index_bytes, j), p.dim,
                         key.data());
      float score = 0;
      for (int64_t h = 0; h < p.heads; ++h) {
        const float* qh = q + (t * p.heads + h) * p.dim;
        float dot = 0;
        for (int64_t i = 0; i < p.dim; ++i) dot += qh[i] * key[i];
        // One rounding per head: fma(w, ReLU(dot), score). This is what the CPU backend's
        // vector kernels (FMA on every x86-64-v3+ host, std::fma elsewhere) and the CUDA kernel
        // compute; a separate product and sum would differ whenever w·ReLU(dot) is inexact.
        score = std::fma(w[t * p.heads + h], std::max(dot, 0.0f), score);
      }
      scores[j] = score;
    }
    order.resize(static_cast<size_t>(visible));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
      return scores[x] != scores[y] ? scores[x] > scores[y] : x < y;  // ties: lower j first
    });
    const int64_t k = std::min(p.topk, visible);
    std::sort(order.begin(), order.begin() + k);
    for (int64_t i = 0; i < k; ++i) chosen[t * p.topk + i] = order[i];
    count[t] = static_cast<int32_t>(k);
  }
}

inline void Attention(const StepBatch& step, const AttentionParams& p, const KvEntryFormat& f,
                      const float* q, const float* kv, const int32_t* chosen, const int32_t* count,
                      const KvPoolView& pool, float* o) {
  const int64_t hd = p.head_dim;
  const float scale = InverseSqrt(hd);
  std::vector<float> keys, logits, acc(static_cast<size_t>(hd));
  std::vector<float> decoded(static_cast<size_t>(hd));
  for (int64_t t = 0; t < step.rows; ++t) {
    const StepSequence& s = step.seqs[step.seq_of_row[t]];
    const int64_t pos = step.positions[t];
    // Candidates in order: the window oldest first, then the compressed entries.
    keys.clear();
    for (int64_t u = std::max<int64_t>(0, pos - p.window + 1); u <= pos; ++u) {
      if (u >= s.start) {
        const float* src = kv + (s.row + u - s.start) * hd;
        keys.insert(keys.end(), src, src + hd);
      } else {
        DecodeMainEntry(s.state + p.window_offset + (u % p.window) * f.main_bytes, f,
                        decoded.data());
        keys.insert(keys.end(), decoded.begin(), decoded.end());
      }
    }
    std::vector<int64_t> entries;
    if (p.ratio == 4) {
      for (int64_t i = 0; i < count[t]; ++i) entries.push_back(chosen[t * p.topk + i]);
    } else if (p.ratio == 128) {
      for (int64_t j = 0; j < (pos + 1) / 128; ++j) entries.push_back(j);
    }
    for (int64_t j : entries) {
      DecodeMainEntry(PageEntry(pool, s, p.entry_offset, p.ratio, f.main_bytes, j), f,
                      decoded.data());
      keys.insert(keys.end(), decoded.begin(), decoded.end());
    }
    const int64_t n = static_cast<int64_t>(keys.size()) / hd;
    logits.assign(static_cast<size_t>(n), 0.0f);
    for (int64_t h = 0; h < p.heads; ++h) {
      const float* qh = q + (t * p.heads + h) * hd;
      const float sink = p.sink[h];
      float mx = sink;
      for (int64_t j = 0; j < n; ++j) {
        float dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += qh[i] * keys[j * hd + i];
        logits[j] = dot * scale;
        mx = std::max(mx, logits[j]);
      }
      float denom = std::exp(sink - mx);
      for (int64_t j = 0; j < n; ++j) {
        logits[j] = std::exp(logits[j] - mx);
        denom += logits[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const float weight = logits[j] / denom;
        for (int64_t i = 0; i < hd; ++i) acc[i] += weight * keys[j * hd + i];
      }
      float* oh = o + (t * p.heads + h) * hd;
      for (int64_t i = 0; i < hd; ++i) oh[i] = Bf16(acc[i]);
      RopeRow(oh + hd - p.rope.dim, p.rope, pos, /*inverse=*/true);
    }
  }
}

inline void StoreWindow(const StepBatch& step, const KvEntryFormat& f, int64_t window,
                        int64_t window_offset, const uint8_t* entries) {
  for (const StepSequence& s : step.host_seqs) {
    for (int64_t i = std::max<int64_t>(0, s.n - window); i < s.n; ++i) {
      std::memcpy(s.state + window_offset + ((s.start + i) % window) * f.main_bytes,
                  entries + (s.row + i) * f.main_bytes, static_cast<size_t>(f.main_bytes));
    }
  }
}

}  // namespace strata::engine::testing::ref
