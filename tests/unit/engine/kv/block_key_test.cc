// Block keys (engine/kv/block_key.h): a key names exactly the tokens from position 0 to its
// block's end under one model, layout and namespace — what keeps one tenant's cache from ever
// answering another's prompt, and a changed prefix from reusing stale blocks.
#include "engine/kv/block_key.h"

#include <vector>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

std::vector<int32_t> Tokens(int64_t n, uint32_t seed) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    t.push_back(static_cast<int32_t>(seed >> 12));
  }
  return t;
}

const KeyScope kScope{0x1234, 0x5678};

TEST(BlockKeyTest, OneKeyPerFullBlockAndDeterministic) {
  EXPECT_TRUE(PrefixBlockKeys(kScope, "t", Tokens(127, 1)).empty());
  EXPECT_EQ(PrefixBlockKeys(kScope, "t", Tokens(128, 1)).size(), 1u);
  EXPECT_EQ(PrefixBlockKeys(kScope, "t", Tokens(1000, 1)).size(), 7u);
  EXPECT_EQ(PrefixBlockKeys(kScope, "t", Tokens(1000, 1)), PrefixBlockKeys(kScope, "t", Tokens(1000, 1)));
  // A longer sequence with the same start has the same keys for the common full blocks.
  std::vector<BlockKey> a = PrefixBlockKeys(kScope, "t", Tokens(300, 1));
  std::vector<BlockKey> b = PrefixBlockKeys(kScope, "t", Tokens(1000, 1));
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0], b[0]);
  EXPECT_EQ(a[1], b[1]);
}

TEST(BlockKeyTest, AKeyDependsOnEveryEarlierTokenAndOnTheScope) {
  std::vector<int32_t> t = Tokens(512, 2);
  const std::vector<BlockKey> base = PrefixBlockKeys(kScope, "t", t);
  // One token changed in block 1: blocks 0 keep their key, 1.. all change.
  t[200] ^= 1;
  const std::vector<BlockKey> changed = PrefixBlockKeys(kScope, "t", t);
  EXPECT_EQ(changed[0], base[0]);
  for (size_t b = 1; b < base.size(); ++b) EXPECT_NE(changed[b], base[b]) << b;
  t[200] ^= 1;
  // Namespace, weights and layout each change every key.
  for (const auto& [scope, ns] : {std::pair{kScope, "u"}, std::pair{KeyScope{0x1235, 0x5678}, "t"},
                                  std::pair{KeyScope{0x1234, 0x5679}, "t"}}) {
    const std::vector<BlockKey> other = PrefixBlockKeys(scope, ns, t);
    for (size_t b = 0; b < base.size(); ++b) EXPECT_NE(other[b], base[b]) << ns << " " << b;
  }
  // The namespace's bytes are length-prefixed: "" and "\0" differ.
  EXPECT_NE(PrefixBlockKeys(kScope, "", t)[0], PrefixBlockKeys(kScope, absl::string_view("\0", 1), t)[0]);
}

TEST(BlockKeyTest, KeysOfManyBlocksAreDistinct) {
  absl::flat_hash_set<BlockKey> seen;
  for (uint32_t seed = 0; seed < 64; ++seed) {
    for (const BlockKey& k : PrefixBlockKeys(kScope, "t", Tokens(128 * 16, seed))) {
      EXPECT_TRUE(seen.insert(k).second);
    }
  }
  EXPECT_EQ(seen.size(), 64u * 16u);
}

TEST(BlockKeyTest, HexAndBytesRoundTrip) {
  const BlockKey k = PrefixBlockKeys(kScope, "t", Tokens(128, 3))[0];
  const std::string hex = k.Hex();
  EXPECT_EQ(hex.size(), 32u);
  EXPECT_EQ(*BlockKey::FromHex(hex), k);
  EXPECT_EQ(*BlockKey::FromBytes(k.Bytes()), k);
  EXPECT_FALSE(BlockKey::FromHex(hex.substr(1)).ok());
  EXPECT_FALSE(BlockKey::FromHex(std::string(32, 'g')).ok());
  EXPECT_FALSE(BlockKey::FromHex(std::string(32, 'A')).ok());  // lowercase only: one spelling
  EXPECT_FALSE(BlockKey::FromBytes("short").ok());
}

}  // namespace
}  // namespace strata::engine
