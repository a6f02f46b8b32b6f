#include "engine/attention.h"

#include <cmath>

namespace strata::engine {
namespace {

KvEntryFormat EntryFormat(const ModelConfig& c, const KvLayout& kv) {
  return KvEntryFormat{c.nope_dim(), c.qk_rope_head_dim, kv.main_entry_bytes(), c.index_head_dim,
                       kv.indexer_entry_bytes()};
}

}  // namespace

AttentionLayer::AttentionLayer(const ModelConfig& config, const LayerWeights& weights,
                               int64_t layer, const KvLayout& kv_layout, const RopeTable& rope,
                               Backend& backend)
    : c_(config),
      w_(weights),
      backend_(backend),
      rope_(rope),
      format_(EntryFormat(config, kv_layout)) {
  const LayerKvLayout& kv = kv_layout.layers()[static_cast<size_t>(layer)];
  const float eps = static_cast<float>(config.rms_norm_eps);
  if (w_.ratio > 0) {
    compressor_ = CompressorParams{w_.ratio,      w_.compressor.width, w_.compressor.norm,
                                   eps,           /*indexer=*/false,   kv.carry_offset,
                                   kv.carry_rows, kv.main_offset,      rope};
  }
  if (w_.ratio == 4) {
    index_compressor_ = CompressorParams{4,   w_.index_compressor.width, w_.index_compressor.norm,
                                         eps, /*indexer=*/true,          kv.indexer_carry_offset,
                                         8,   kv.indexer_offset,         rope};
    indexer_ = IndexerParams{config.index_n_heads, config.index_head_dim, config.index_topk,
                             kv.indexer_offset};
  }
  attention_ = AttentionParams{config.num_attention_heads,
                               config.head_dim,
                               config.sliding_window,
                               w_.ratio,
                               kv.window_offset,
                               kv.main_offset,
                               config.index_topk,
                               w_.attn_sink,
                               rope};
}

void AttentionLayer::Forward(const StepBatch& step, const float* h, const KvPoolView& pool,
                             const AttentionScratch& s, float* y) {
  Backend& b = backend_;
  const int64_t T = step.rows, H = c_.num_attention_heads, hd = c_.head_dim;
  const int64_t ql = c_.q_lora_rank;
  const float eps = static_cast<float>(c_.rms_norm_eps);

  // Queries: q_norm(wq_a h), then wq_b, each head scaled and rotated.
  b.Linear(w_.wq_a, h, T, s.qr);
  b.RmsNorm(s.qr, w_.q_norm, T, ql, eps, s.qr);
  b.Linear(w_.wq_b, s.qr, T, s.q);
  b.QueryHeads(s.q, T, H, hd, eps, rope_, step.positions);
  // The window KV: kv_norm(wkv h), rotated, simulated FP8 (and its stored bytes).
  b.Linear(w_.wkv, h, T, s.kv);
  b.RmsNorm(s.kv, w_.kv_norm, T, hd, eps, s.kv);
  b.Rope(s.kv, T, hd, rope_, step.positions);
  b.EncodeMainEntries(s.kv, T, format_, s.kv_bytes);

  // Compressors (and, for CSA, the indexer's queries): entries completed by this step are
  // written before anything reads them.
  auto compress = [&](const CompressorWeights& cw, const CompressorParams& p, float* a, float* z) {
    b.Linear(cw.wkv, h, T, a);
    b.Linear(cw.wgate, h, T, z);
    b.AddApe(z, T, cw.width, cw.ape, cw.ratio, step.positions);
    b.Compress(step, p, format_, a, z, pool);
  };
  if (w_.ratio > 0) compress(w_.compressor, compressor_, s.ca, s.cz);
  if (w_.ratio == 4) {
    compress(w_.index_compressor, index_compressor_, s.ia, s.iz);
    const int64_t ih = c_.index_n_heads, ic = c_.index_head_dim;
    b.Linear(w_.index_wq_b, s.qr, T, s.qi);
    b.IndexerQueries(s.qi, T, ih, ic, rope_, step.positions);
    b.Linear(w_.index_weights_proj, h, T, s.wi);
    b.ScaleBf16(
        s.wi, T * ih,
        (1.0f / std::sqrt(static_cast<float>(ic))) * (1.0f / std::sqrt(static_cast<float>(ih))));
    b.IndexerTopK(step, indexer_, format_, s.qi, s.wi, pool, s.chosen, s.count);
  }
  b.Attention(step, attention_, format_, s.q, s.kv, s.chosen, s.count, pool, s.o);
  b.StoreWindow(step, format_, c_.sliding_window, attention_.window_offset, s.kv_bytes);

  // Grouped output projection: r_g = wo_a[g] · o_g, then wo_b over concat(r_g).
  b.GroupedLinear(w_.wo_a, c_.o_groups, s.o, T, s.r);
  b.RoundBf16(s.r, T * c_.o_groups * c_.o_lora_rank);
  b.Linear(w_.wo_b, s.r, T, y);
  b.RoundBf16(y, T * c_.hidden_size);
}

}  // namespace strata::engine
