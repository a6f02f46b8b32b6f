#include "engine/kv/kv_sink.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/kv/kv_cache.h"

namespace strata::engine {

PoolKvSink::PoolKvSink(KvPool& pool, std::vector<int32_t> blocks, uint8_t* state,
                       uint8_t* checkpoint)
    : pool_(pool), blocks_(std::move(blocks)), state_(state), checkpoint_(checkpoint) {}

void PoolKvSink::PutPages(absl::Span<const KvPage> pages) {
  const int64_t block_bytes = pool_.layout().block_bytes();
  for (const KvPage& p : pages) {
    if (p.block < 0 || p.block >= static_cast<int64_t>(blocks_.size()) || p.offset < 0 ||
        p.bytes < 0 || p.offset + p.bytes > block_bytes) {
      if (first_error_.ok()) {
        first_error_ = absl::OutOfRangeError(absl::StrCat(
            "KV page of block ", p.block, " [", p.offset, ", +", p.bytes, ") is outside the ",
            blocks_.size(), " target blocks of ", block_bytes, " bytes"));
      }
      continue;
    }
    std::memcpy(pool_.block(blocks_[static_cast<size_t>(p.block)]) + p.offset, p.local,
                static_cast<size_t>(p.bytes));
    bytes_ += static_cast<uint64_t>(p.bytes);
  }
}

void PoolKvSink::PutState(absl::Span<const uint8_t> state, KvStateKind kind) {
  uint8_t* to = kind == KvStateKind::kFinal ? state_ : checkpoint_;
  if (to == nullptr) return;
  std::memcpy(to, state.data(), state.size());
  bytes_ += state.size();
}

}  // namespace strata::engine
