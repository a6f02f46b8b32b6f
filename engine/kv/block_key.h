// Prefix-cache block keys (DESIGN.md §5). A full 128-token block of a sequence is named by a key
// chained over everything its KV bytes depend on:
//
//   key(b) = XXH3-128(key(b−1) ‖ the block's 128 token ids ‖ scope)     key(−1) = 0
//   scope  = XXH3-128(model identity ‖ KV layout fingerprint ‖ cache namespace)
//
// so equal keys mean the same tokens from position 0 through the block's end, under the same
// weights, the same byte layout and the same namespace. The namespace is what isolates tenants:
// a request only ever finds blocks written under its own (its tenant's name, or a shared one a
// tenant opts into; the caller decides which string it passes).
//
// Every component that names blocks (prefill, decode, the router's index lookups, the kvstore)
// computes keys with these functions, so they cannot disagree.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/kv/kv_layout.h"

namespace strata::engine {

struct BlockKey {
  uint64_t lo = 0, hi = 0;

  friend bool operator==(const BlockKey& a, const BlockKey& b) { return a.lo == b.lo && a.hi == b.hi; }
  friend bool operator!=(const BlockKey& a, const BlockKey& b) { return !(a == b); }
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.lo, k.hi);
  }
  // 32 lowercase hex digits (hi then lo), as stored in Redis and in file names.
  std::string Hex() const;
  static absl::StatusOr<BlockKey> FromHex(absl::string_view hex);
  // 16 bytes, little-endian lo then hi (the wire form).
  std::string Bytes() const;
  static absl::StatusOr<BlockKey> FromBytes(absl::string_view bytes);
};

// What every key of a model's cache is scoped by, apart from the namespace.
struct KeyScope {
  uint64_t model_identity = 0;      // Checkpoint::identity(): which weights
  uint64_t layout_fingerprint = 0;  // KvLayout::fingerprint(): which byte layout

  // "<identity>.<fingerprint>" in hex: how workers publish it in the registry, so a router (which
  // never loads the weights) computes the same keys.
  std::string Hex() const;
  static absl::StatusOr<KeyScope> FromHex(absl::string_view hex);
};

// The keys of the full blocks of `tokens` (tokens.size() / 128 of them; a partial last block has
// none: its bytes are not final).
std::vector<BlockKey> PrefixBlockKeys(const KeyScope& scope, absl::string_view cache_namespace,
                                      absl::Span<const int32_t> tokens);

}  // namespace strata::engine
