#include "engine/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/numerics.h"

namespace strata::engine {

// Per-step activations of one layer's attention.
struct AttentionLayer::Projections {
  std::vector<float> qr;        // [T, q_lora]
  std::vector<float> q;         // [T, H·c], scaled and rotated
  std::vector<float> kv;        // [T, c], normalised, rotated, FP8-simulated
  std::vector<uint8_t> kv_bytes;// [T, main entry bytes]
  std::vector<float> ca, cz;    // [T, width] main compressor projections (z with ape added)
  std::vector<float> ia, iz;    // [T, 2·ic] indexer compressor projections
  std::vector<float> qi;        // [T, IH·ic] indexer queries (rotated, Hadamard, FP4-simulated)
  std::vector<float> wi;        // [T, IH] indexer head weights
};

AttentionLayer::AttentionLayer(const ModelConfig& config, const LayerWeights& weights, int64_t layer,
                               const KvLayout& kv_layout, const Rope& rope, Backend& backend, ThreadPool& threads)
    : c_(config),
      w_(weights),
      kv_(kv_layout.layers()[static_cast<size_t>(layer)]),
      rope_(rope),
      backend_(backend),
      threads_(threads),
      main_codec_{config.nope_dim(), config.qk_rope_head_dim, kv_layout.main_entry_bytes()},
      index_codec_{config.index_head_dim, kv_layout.indexer_entry_bytes()} {}

void AttentionLayer::Project(const StepLayout& step, const float* h, Projections& p) {
  const int64_t T = step.rows(), H = c_.num_attention_heads, hd = c_.head_dim;
  const int64_t ql = c_.q_lora_rank, nope = c_.nope_dim();
  const double eps = c_.rms_norm_eps;

  std::vector<float> qa(static_cast<size_t>(T * ql));
  backend_.Linear(w_.wq_a, h, T, qa.data());
  p.qr.resize(qa.size());
  for (int64_t t = 0; t < T; ++t) {
    RoundBf16(qa.data() + t * ql, ql);
    RmsNorm(qa.data() + t * ql, w_.q_norm.data(), ql, eps, p.qr.data() + t * ql);
  }
  p.q.resize(static_cast<size_t>(T * H * hd));
  backend_.Linear(w_.wq_b, p.qr.data(), T, p.q.data());
  p.kv.resize(static_cast<size_t>(T * hd));
  backend_.Linear(w_.wkv, h, T, p.kv.data());
  p.kv_bytes.resize(static_cast<size_t>(T * main_codec_.bytes));
  threads_.ParallelFor(static_cast<size_t>(T), [&](size_t t) {
    const int64_t pos = step.positions[t];
    for (int64_t head = 0; head < H; ++head) {
      float* qh = p.q.data() + (static_cast<int64_t>(t) * H + head) * hd;
      RoundBf16(qh, hd);
      ScaleHead(qh, hd, eps);
      rope_.Apply(qh + nope, pos, /*inverse=*/false);
    }
    float* kv = p.kv.data() + static_cast<int64_t>(t) * hd;
    RoundBf16(kv, hd);
    RmsNorm(kv, w_.kv_norm.data(), hd, eps, kv);
    rope_.Apply(kv + nope, pos, false);
    main_codec_.Encode(kv, p.kv_bytes.data() + static_cast<int64_t>(t) * main_codec_.bytes);
  });

  auto compressor_inputs = [&](const CompressorWeights& cw, std::vector<float>& a, std::vector<float>& z) {
    a.resize(static_cast<size_t>(T * cw.width));
    z.resize(static_cast<size_t>(T * cw.width));
    backend_.Linear(cw.wkv, h, T, a.data());
    backend_.Linear(cw.wgate, h, T, z.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* ape = cw.ape + (step.positions[static_cast<size_t>(t)] % cw.ratio) * cw.width;
      float* zt = z.data() + t * cw.width;
      for (int64_t i = 0; i < cw.width; ++i) zt[i] += ape[i];
    }
  };
  if (w_.ratio > 0) compressor_inputs(w_.compressor, p.ca, p.cz);
  if (w_.ratio == 4) {
    compressor_inputs(w_.index_compressor, p.ia, p.iz);
    const int64_t ih = c_.index_n_heads, ic = c_.index_head_dim;
    p.qi.resize(static_cast<size_t>(T * ih * ic));
    backend_.Linear(w_.index_wq_b, p.qr.data(), T, p.qi.data());
    p.wi.resize(static_cast<size_t>(T * ih));
    backend_.Linear(w_.index_weights_proj, h, T, p.wi.data());
    const float factor = (1.0f / std::sqrt(static_cast<float>(ic))) * (1.0f / std::sqrt(static_cast<float>(ih)));
    threads_.ParallelFor(static_cast<size_t>(T), [&](size_t t) {
      const int64_t pos = step.positions[t];
      for (int64_t head = 0; head < ih; ++head) {
        float* q = p.qi.data() + (static_cast<int64_t>(t) * ih + head) * ic;
        RoundBf16(q, ic);
        rope_.Apply(q + ic - rope_.dim(), pos, false);
        HadamardBf16(q, ic);
        SimulateFp4(q, ic);
      }
      float* wt = p.wi.data() + static_cast<int64_t>(t) * ih;
      for (int64_t head = 0; head < ih; ++head) wt[head] = RoundToBf16(RoundToBf16(wt[head]) * factor);
    });
  }
}

// Pools one compressed entry from the carried rows and writes it into its block.
void AttentionLayer::EmitEntry(const CompressorWeights& cw, const uint8_t* carry, int64_t carry_rows,
                               int64_t group, bool indexer, SequenceCache& cache, KvPool& pool) {
  const int64_t m = cw.ratio, width = cw.width;
  const int64_t out_dim = m == 4 ? width / 2 : width;
  auto row = [&](int64_t pos) { return reinterpret_cast<const float*>(carry) + (pos % carry_rows) * 2 * width; };
  std::vector<float> pooled(static_cast<size_t>(out_dim));
  std::vector<float> zs(static_cast<size_t>(2 * m)), as(static_cast<size_t>(2 * m));
  for (int64_t ch = 0; ch < out_dim; ++ch) {
    int64_t k = 0;
    if (m == 4 && group > 0) {  // previous group, first half of the channels
      for (int64_t pos = (group - 1) * m; pos < group * m; ++pos, ++k) {
        as[static_cast<size_t>(k)] = row(pos)[ch];
        zs[static_cast<size_t>(k)] = row(pos)[width + ch];
      }
    }
    const int64_t offset = m == 4 ? out_dim : 0;  // this group: second half for CSA
    for (int64_t pos = group * m; pos < (group + 1) * m; ++pos, ++k) {
      as[static_cast<size_t>(k)] = row(pos)[offset + ch];
      zs[static_cast<size_t>(k)] = row(pos)[width + offset + ch];
    }
    float mx = -INFINITY;
    for (int64_t i = 0; i < k; ++i) mx = std::max(mx, zs[static_cast<size_t>(i)]);
    float sum = 0, acc = 0;
    for (int64_t i = 0; i < k; ++i) sum += (zs[static_cast<size_t>(i)] = std::exp(zs[static_cast<size_t>(i)] - mx));
    for (int64_t i = 0; i < k; ++i) acc += zs[static_cast<size_t>(i)] / sum * as[static_cast<size_t>(i)];
    pooled[static_cast<size_t>(ch)] = RoundToBf16(acc);
  }
  RmsNorm(pooled.data(), cw.norm.data(), out_dim, c_.rms_norm_eps, pooled.data());
  rope_.Apply(pooled.data() + out_dim - rope_.dim(), group * m, false);
  const int64_t per_block = kBlockTokens / m;
  uint8_t* block = pool.block(cache.blocks[static_cast<size_t>(group / per_block)]);
  const int64_t slot = group % per_block;
  if (indexer) {
    HadamardBf16(pooled.data(), out_dim);
    index_codec_.Encode(pooled.data(), block + kv_.indexer_offset + slot * index_codec_.bytes);
  } else {
    main_codec_.Encode(pooled.data(), block + kv_.main_offset + slot * main_codec_.bytes);
  }
}

void AttentionLayer::RunCompressors(const StepLayout& step, Projections& p, KvPool& pool) {
  if (w_.ratio == 0) return;
  for (const StepSequenceRef& s : step.seqs) {
    uint8_t* state = s.cache->state.data();
    for (int64_t i = 0; i < s.n; ++i) {
      const int64_t pos = s.start + i, row = s.row + i;
      auto carry_row = [&](uint8_t* carry, int64_t rows, int64_t width, const std::vector<float>& a,
                           const std::vector<float>& z) {
        float* dst = reinterpret_cast<float*>(carry) + (pos % rows) * 2 * width;
        std::memcpy(dst, a.data() + row * width, static_cast<size_t>(width) * 4);
        std::memcpy(dst + width, z.data() + row * width, static_cast<size_t>(width) * 4);
      };
      uint8_t* carry = state + kv_.carry_offset;
      carry_row(carry, kv_.carry_rows, w_.compressor.width, p.ca, p.cz);
      if ((pos + 1) % w_.ratio == 0) {
        EmitEntry(w_.compressor, carry, kv_.carry_rows, pos / w_.ratio, /*indexer=*/false, *s.cache, pool);
      }
      if (w_.ratio == 4) {
        uint8_t* icarry = state + kv_.indexer_carry_offset;
        carry_row(icarry, 8, w_.index_compressor.width, p.ia, p.iz);
        if ((pos + 1) % 4 == 0) {
          EmitEntry(w_.index_compressor, icarry, 8, pos / 4, /*indexer=*/true, *s.cache, pool);
        }
      }
    }
  }
}

void AttentionLayer::DecodeEntries(const StepSequenceRef& s, const KvPool& pool, DecodedEntries& out) {
  const int64_t m = w_.ratio;
  if (m == 0) return;
  const int64_t visible = (s.start + s.n) / m, per_block = kBlockTokens / m;
  const int64_t hd = c_.head_dim;
  if (m != 128) return;  // CSA keys are scored slice by slice (SelectTopK)
  out.main.resize(static_cast<size_t>(visible * hd));
  constexpr int64_t kSlice = 256;
  threads_.ParallelFor(static_cast<size_t>((visible + kSlice - 1) / kSlice), [&](size_t slice) {
    const int64_t end = std::min<int64_t>(visible, (static_cast<int64_t>(slice) + 1) * kSlice);
    for (int64_t j = static_cast<int64_t>(slice) * kSlice; j < end; ++j) {
      const uint8_t* block = pool.block(s.cache->blocks[static_cast<size_t>(j / per_block)]);
      main_codec_.Decode(block + kv_.main_offset + (j % per_block) * main_codec_.bytes, out.main.data() + j * hd);
    }
  });
}

void AttentionLayer::SelectTopK(const StepSequenceRef& s, const Projections& p, const KvPool& pool,
                                std::vector<std::vector<int64_t>>& chosen) {
  const int64_t ih = c_.index_n_heads, ic = c_.index_head_dim, m = 4, per_block = kBlockTokens / m;
  const int64_t max_visible = (s.start + s.n) / m;
  if (max_visible == 0) return;
  // Scores of (token, entry) are Σ_h ω_h·ReLU(q_h·k) with Dot's fixed order, whatever the tiling:
  // the same for a token whether it is prefilled in a chunk or decoded alone. Keys are decoded
  // from their FP4 bytes a slice at a time into per-thread scratch, never materialised whole.
  constexpr int64_t kSlice = 256;
  const int64_t slices = (max_visible + kSlice - 1) / kSlice;
  const int64_t tile = std::clamp<int64_t>((int64_t{16} << 20) / max_visible, 1, s.n);
  std::vector<float> scores;
  for (int64_t first = 0; first < s.n; first += tile) {
    const int64_t count = std::min(tile, s.n - first);
    scores.assign(static_cast<size_t>(count * max_visible), 0.0f);
    threads_.ParallelFor(static_cast<size_t>(slices), [&](size_t slice) {
      const int64_t j0 = static_cast<int64_t>(slice) * kSlice, j1 = std::min(max_visible, j0 + kSlice);
      thread_local std::vector<float> keys;
      keys.resize(static_cast<size_t>(kSlice * ic));
      for (int64_t j = j0; j < j1; ++j) {
        const uint8_t* block = pool.block(s.cache->blocks[static_cast<size_t>(j / per_block)]);
        index_codec_.Decode(block + kv_.indexer_offset + (j % per_block) * index_codec_.bytes,
                            keys.data() + (j - j0) * ic);
      }
      for (int64_t i = 0; i < count; ++i) {
        const int64_t row = s.row + first + i;
        const int64_t visible = std::min(j1, (s.start + first + i + 1) / m);
        const float* q = p.qi.data() + row * ih * ic;
        const float* w = p.wi.data() + row * ih;
        float* out = scores.data() + i * max_visible;
        if (visible > j0) IndexerScores(q, w, ih, keys.data(), visible - j0, ic, out + j0);
      }
    });
    threads_.ParallelFor(static_cast<size_t>(count), [&](size_t i) {
      const int64_t row = s.row + first + static_cast<int64_t>(i);
      const int64_t visible = (s.start + first + static_cast<int64_t>(i) + 1) / m;
      const int64_t k = std::min<int64_t>(c_.index_topk, visible);
      std::vector<int64_t>& out = chosen[static_cast<size_t>(row)];
      out.resize(static_cast<size_t>(visible));
      std::iota(out.begin(), out.end(), 0);
      if (k == visible) return;
      const float* sc = scores.data() + static_cast<int64_t>(i) * max_visible;
      // Highest scores first; among equal scores the lower index (MODEL.md §5).
      std::partial_sort(out.begin(), out.begin() + k, out.end(), [&](int64_t a, int64_t b) {
        return sc[a] != sc[b] ? sc[a] > sc[b] : a < b;
      });
      out.resize(static_cast<size_t>(k));
      std::sort(out.begin(), out.end());
    });
  }
}

void AttentionLayer::AttendToken(const StepLayout& step, int64_t row, const Projections& p,
                                 const DecodedEntries& decoded, const std::vector<int64_t>& chosen,
                                 const KvPool& pool, float* o) {
  const StepSequenceRef& s = step.seqs[static_cast<size_t>(step.seq_of_row[static_cast<size_t>(row)])];
  const SequenceCache& cache = *s.cache;
  const int64_t pos = step.positions[static_cast<size_t>(row)];
  const int64_t H = c_.num_attention_heads, hd = c_.head_dim, w = c_.sliding_window, m = w_.ratio;

  // Candidates: the window (oldest first), then compressed entries in index order.
  std::vector<float> cand;
  const int64_t first = std::max<int64_t>(0, pos - w + 1);
  cand.reserve(static_cast<size_t>((pos - first + 1) * hd));
  std::vector<float> entry(static_cast<size_t>(hd));
  for (int64_t u = first; u <= pos; ++u) {
    if (u >= s.start) {
      const float* src = p.kv.data() + (s.row + (u - s.start)) * hd;
      cand.insert(cand.end(), src, src + hd);
    } else {
      main_codec_.Decode(cache.state.data() + kv_.window_offset + (u % w) * main_codec_.bytes, entry.data());
      cand.insert(cand.end(), entry.begin(), entry.end());
    }
  }
  if (m > 0) {
    const int64_t visible = (pos + 1) / m, per_block = kBlockTokens / m;
    if (m == 4) {
      for (int64_t j : chosen) {
        const uint8_t* block = pool.block(cache.blocks[static_cast<size_t>(j / per_block)]);
        main_codec_.Decode(block + kv_.main_offset + (j % per_block) * main_codec_.bytes, entry.data());
        cand.insert(cand.end(), entry.begin(), entry.end());
      }
    } else {
      cand.insert(cand.end(), decoded.main.begin(), decoded.main.begin() + visible * hd);
    }
  }
  const int64_t n = static_cast<int64_t>(cand.size()) / hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> logits(static_cast<size_t>(n));
  for (int64_t head = 0; head < H; ++head) {
    const float* q = p.q.data() + (row * H + head) * hd;
    const float sink = w_.attn_sink[static_cast<size_t>(head)];
    float mx = sink;
    for (int64_t j = 0; j < n; ++j) {
      logits[static_cast<size_t>(j)] = Dot(q, cand.data() + j * hd, hd) * scale;
      mx = std::max(mx, logits[static_cast<size_t>(j)]);
    }
    float denom = std::exp(sink - mx);
    for (int64_t j = 0; j < n; ++j) denom += (logits[static_cast<size_t>(j)] = std::exp(logits[static_cast<size_t>(j)] - mx));
    float* oh = o + head * hd;
    std::fill(oh, oh + hd, 0.0f);
    for (int64_t j = 0; j < n; ++j) Axpy(logits[static_cast<size_t>(j)] / denom, cand.data() + j * hd, oh, hd);
    RoundBf16(oh, hd);
    rope_.Apply(oh + c_.nope_dim(), pos, /*inverse=*/true);
  }
}

void AttentionLayer::WriteWindow(const StepLayout& step, const Projections& p) {
  const int64_t w = c_.sliding_window;
  for (const StepSequenceRef& s : step.seqs) {
    uint8_t* ring = s.cache->state.data() + kv_.window_offset;
    for (int64_t i = std::max<int64_t>(0, s.n - w); i < s.n; ++i) {
      std::memcpy(ring + ((s.start + i) % w) * main_codec_.bytes,
                  p.kv_bytes.data() + (s.row + i) * main_codec_.bytes, static_cast<size_t>(main_codec_.bytes));
    }
  }
}

void AttentionLayer::Forward(const StepLayout& step, const float* h, KvPool& pool, float* y) {
  const int64_t T = step.rows(), H = c_.num_attention_heads, hd = c_.head_dim, G = c_.o_groups;
  Projections p;
  Project(step, h, p);
  RunCompressors(step, p, pool);
  std::vector<DecodedEntries> decoded(step.seqs.size());
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(w_.ratio == 4 ? T : 0));
  for (size_t s = 0; s < step.seqs.size(); ++s) {
    DecodeEntries(step.seqs[s], pool, decoded[s]);
    if (w_.ratio == 4) SelectTopK(step.seqs[s], p, pool, chosen);
  }
  static const std::vector<int64_t> kNone;
  std::vector<float> o(static_cast<size_t>(T * H * hd));
  threads_.ParallelFor(static_cast<size_t>(T), [&](size_t t) {
    AttendToken(step, static_cast<int64_t>(t), p, decoded[static_cast<size_t>(step.seq_of_row[t])],
                w_.ratio == 4 ? chosen[t] : kNone, pool, o.data() + static_cast<int64_t>(t) * H * hd);
  });
  WriteWindow(step, p);

  // Grouped output projection: r_g = wo_a[g] · o_g, then wo_b over concat(r_g).
  const int64_t group_in = H * hd / G, ol = c_.o_lora_rank;
  std::vector<float> og(static_cast<size_t>(T * group_in)), rg(static_cast<size_t>(T * ol));
  std::vector<float> r(static_cast<size_t>(T * G * ol));
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(og.data() + t * group_in, o.data() + t * H * hd + g * group_in, static_cast<size_t>(group_in) * 4);
    }
    WeightView wg = w_.wo_a;
    wg.data = static_cast<const uint16_t*>(w_.wo_a.data) + g * ol * group_in;
    wg.rows = ol;
    backend_.Linear(wg, og.data(), T, rg.data());
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < ol; ++i) r[static_cast<size_t>(t * G * ol + g * ol + i)] = RoundToBf16(rg[static_cast<size_t>(t * ol + i)]);
    }
  }
  backend_.Linear(w_.wo_b, r.data(), T, y);
  RoundBf16(y, T * c_.hidden_size);
}

}  // namespace strata::engine
