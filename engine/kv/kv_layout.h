// The byte layout of the compressed KV cache (DESIGN.md §5), computed from a model config. The
// paged pool, the wire format, the SSD tier and `strata kv-size` all size things with this one
// class, so the accounting cannot drift from what the allocator really does.
//
// One block covers 128 tokens (the lcm of the CSA ratio 4 and the HCA ratio 128) for every
// layer: per CSA layer 32 main entries + 32 indexer entries, per HCA layer 1 main entry; window-
// only layers keep nothing per block. A request's fixed-size state slot holds, per layer, the
// last `sliding_window` tokens' KV entries and each compressor's carried rows.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_config.h"

namespace strata::engine {

inline constexpr int64_t kBlockTokens = 128;
// Every block and state slot starts with a header (engine/kv/kv_cache.h) that makes its bytes a
// self-describing, checksummed record: the same bytes in memory, on the wire and on disk.
inline constexpr int64_t kKvHeaderBytes = 64;

struct LayerKvLayout {
  int64_t ratio = 0;                // 0, 4 or 128
  int64_t main_entries = 0;         // per block
  int64_t indexer_entries = 0;      // per block
  int64_t main_offset = 0;          // byte offset of this layer's main page in a block (after the header)
  int64_t indexer_offset = 0;       // byte offset of this layer's indexer page in a block
  // State slot: window ring, then compressor carries (FP32 a and z rows).
  int64_t window_offset = 0;
  int64_t carry_offset = 0;         // main compressor: carry_rows × 2 × width floats
  int64_t carry_rows = 0;           // tokens carried: 2·m for CSA (previous + current group), m for HCA
  int64_t carry_width = 0;          // channels per row: 2c for CSA, c for HCA
  int64_t indexer_carry_offset = 0; // indexer compressor: 2·4 rows × 2 × 2·ic floats
};

class KvLayout {
 public:
  explicit KvLayout(const ModelConfig& config);

  // Main entry: FP8 E4M3 non-RoPE part, one UE8M0 scale per 64 values, BF16 RoPE part,
  // padded to 8 bytes (584 for the real models).
  int64_t main_entry_bytes() const { return main_entry_bytes_; }
  // Indexer entry: packed FP4 E2M1 with one UE8M0 scale per 32 values (68 for ic = 128).
  int64_t indexer_entry_bytes() const { return indexer_entry_bytes_; }
  // Whole records, header included.
  int64_t block_bytes() const { return block_bytes_; }
  int64_t state_bytes() const { return state_bytes_; }
  // Identifies the layout (every field that changes a byte offset); stored in each header so a
  // block is never read with another model's layout.
  uint64_t fingerprint() const { return fingerprint_; }
  const std::vector<LayerKvLayout>& layers() const { return layers_; }  // main layers only

  // Cache bytes for a context of n tokens: whole blocks plus one state slot.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + kBlockTokens - 1) / kBlockTokens; }
  int64_t BytesForContext(int64_t tokens) const { return BlocksFor(tokens) * block_bytes_ + state_bytes_; }
  double bytes_per_token() const { return static_cast<double>(block_bytes_) / kBlockTokens; }

 private:
  int64_t main_entry_bytes_ = 0;
  int64_t indexer_entry_bytes_ = 0;
  int64_t block_bytes_ = 0;
  int64_t state_bytes_ = 0;
  uint64_t fingerprint_ = 0;
  std::vector<LayerKvLayout> layers_;
};

// DeepSeek-V3.2's cache for comparison: 61 layers, each a 656-byte FP8 MLA latent plus a
// 132-byte indexer entry per token.
inline constexpr int64_t kV32Layers = 61;
inline constexpr int64_t kV32BytesPerTokenPerLayer = 656 + 132;
inline constexpr int64_t V32BytesForContext(int64_t tokens) { return tokens * kV32Layers * kV32BytesPerTokenPerLayer; }

}  // namespace strata::engine
