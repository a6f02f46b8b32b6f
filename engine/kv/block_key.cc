#include "engine/kv/block_key.h"

#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "xxhash.h"

namespace strata::engine {
namespace {

BlockKey FromHash(XXH128_hash_t h) { return BlockKey{h.low64, h.high64}; }

}  // namespace

std::string BlockKey::Hex() const { return absl::StrFormat("%016x%016x", hi, lo); }

absl::StatusOr<BlockKey> BlockKey::FromHex(absl::string_view hex) {
  BlockKey k;
  if (hex.size() != 32 || !absl::SimpleHexAtoi(hex.substr(0, 16), &k.hi) ||
      !absl::SimpleHexAtoi(hex.substr(16), &k.lo) ||
      hex.find_first_not_of("0123456789abcdef") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("block key '", absl::CHexEscape(hex.substr(0, 40)), "' is not 32 hex digits"));
  }
  return k;
}

std::string BlockKey::Bytes() const {
  std::string out(16, '\0');
  std::memcpy(out.data(), &lo, 8);
  std::memcpy(out.data() + 8, &hi, 8);
  return out;
}

absl::StatusOr<BlockKey> BlockKey::FromBytes(absl::string_view bytes) {
  if (bytes.size() != 16) {
    return absl::InvalidArgumentError(absl::StrCat("a block key is 16 bytes, not ", bytes.size()));
  }
  BlockKey k;
  std::memcpy(&k.lo, bytes.data(), 8);
  std::memcpy(&k.hi, bytes.data() + 8, 8);
  return k;
}

std::string KeyScope::Hex() const { return absl::StrFormat("%016x.%016x", model_identity, layout_fingerprint); }

absl::StatusOr<KeyScope> KeyScope::FromHex(absl::string_view hex) {
  KeyScope s;
  if (hex.size() != 33 || hex[16] != '.' || !absl::SimpleHexAtoi(hex.substr(0, 16), &s.model_identity) ||
      !absl::SimpleHexAtoi(hex.substr(17), &s.layout_fingerprint)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV key scope '", absl::CHexEscape(hex.substr(0, 40)), "' is not <16 hex>.<16 hex>"));
  }
  return s;
}

std::vector<BlockKey> PrefixBlockKeys(const KeyScope& scope, absl::string_view cache_namespace,
                                      absl::Span<const int32_t> tokens) {
  // The scope digest: fixed-width fields, then the namespace (its length first, so no two
  // (identity, fingerprint, namespace) triples hash the same bytes).
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  const uint64_t fixed[3] = {scope.model_identity, scope.layout_fingerprint,
                             static_cast<uint64_t>(cache_namespace.size())};
  XXH3_128bits_update(state, fixed, sizeof(fixed));
  XXH3_128bits_update(state, cache_namespace.data(), cache_namespace.size());
  const XXH128_hash_t digest = XXH3_128bits_digest(state);

  std::vector<BlockKey> keys;
  const size_t blocks = tokens.size() / static_cast<size_t>(kBlockTokens);
  keys.reserve(blocks);
  BlockKey parent;
  for (size_t b = 0; b < blocks; ++b) {
    XXH3_128bits_reset(state);
    const uint64_t head[2] = {parent.lo, parent.hi};
    XXH3_128bits_update(state, head, sizeof(head));
    XXH3_128bits_update(state, tokens.data() + b * static_cast<size_t>(kBlockTokens),
                        static_cast<size_t>(kBlockTokens) * sizeof(int32_t));
    XXH3_128bits_update(state, &digest, sizeof(digest));
    parent = FromHash(XXH3_128bits_digest(state));
    keys.push_back(parent);
  }
  XXH3_freeState(state);
  return keys;
}

}  // namespace strata::engine
