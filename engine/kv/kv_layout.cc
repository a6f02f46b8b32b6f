#include "engine/kv/kv_layout.h"

#include "xxhash.h"

namespace strata::engine {
namespace {

int64_t RoundUp(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

}  // namespace

KvLayout::KvLayout(const ModelConfig& c) {
  const int64_t nope = c.nope_dim(), rope = c.qk_rope_head_dim;
  main_entry_bytes_ = RoundUp(nope + nope / 64 + 2 * rope, 8);
  indexer_entry_bytes_ = RoundUp(c.index_head_dim / 2 + c.index_head_dim / 32, 4);
  int64_t block = kKvHeaderBytes, state = kKvHeaderBytes;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerKvLayout l;
    l.ratio = c.ratio(i);
    if (l.ratio > 0) l.main_entries = kBlockTokens / l.ratio;
    if (l.ratio == 4) l.indexer_entries = kBlockTokens / 4;
    l.main_offset = block;
    block += l.main_entries * main_entry_bytes_;
    l.indexer_offset = block;
    block += l.indexer_entries * indexer_entry_bytes_;

    l.window_offset = state;
    state += c.sliding_window * main_entry_bytes_;
    if (l.ratio > 0) {
      l.carry_rows = l.ratio == 4 ? 8 : l.ratio;
      l.carry_width = l.ratio == 4 ? 2 * c.head_dim : c.head_dim;
      l.carry_offset = state;
      state += l.carry_rows * 2 * l.carry_width * 4;
    }
    if (l.ratio == 4) {
      l.indexer_carry_offset = state;
      state += 8 * 2 * (2 * c.index_head_dim) * 4;
    }
    layers_.push_back(l);
  }
  block_bytes_ = block;
  state_bytes_ = state;
  const int64_t shape[] = {c.num_hidden_layers, c.head_dim, c.qk_rope_head_dim, c.index_head_dim,
                           c.sliding_window, main_entry_bytes_, indexer_entry_bytes_, block_bytes_, state_bytes_};
  fingerprint_ = XXH3_64bits(shape, sizeof(shape));
  fingerprint_ = XXH3_64bits_withSeed(c.compress_ratios.data(), c.compress_ratios.size() * sizeof(int64_t),
                                      fingerprint_);
}

}  // namespace strata::engine
