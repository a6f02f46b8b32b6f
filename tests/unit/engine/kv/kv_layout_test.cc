#include "engine/kv/kv_layout.h"

#include <vector>

#include "engine/kv/kv_codec.h"
#include "engine/numerics.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

TEST(KvLayoutTest, EntrySizesMatchThePaper) {
  KvLayout flash(*PresetConfig("flash"));
  EXPECT_EQ(flash.main_entry_bytes(), 584);    // 448 FP8 + 7 scales + 64 BF16, padded
  EXPECT_EQ(flash.indexer_entry_bytes(), 68);  // 64 packed FP4 + 4 scales
  // Per 128 tokens: 21 CSA layers × (32 × 584 + 32 × 68) + 20 HCA layers × 584 + header.
  EXPECT_EQ(flash.block_bytes(), 21 * (32 * 584 + 32 * 68) + 20 * 584 + kKvHeaderBytes);
}

TEST(KvLayoutTest, MillionTokenRatiosAreNearThePapers) {
  const int64_t n = 1048576;
  for (auto [preset, want] : {std::pair{"flash", 0.07}, std::pair{"pro", 0.10}}) {
    KvLayout layout(*PresetConfig(preset));
    double ratio = static_cast<double>(layout.BytesForContext(n)) / static_cast<double>(V32BytesForContext(n));
    EXPECT_NEAR(ratio, want, 0.01) << preset;
  }
}

TEST(KvLayoutTest, FingerprintSeparatesLayouts) {
  EXPECT_NE(KvLayout(*PresetConfig("tiny")).fingerprint(), KvLayout(*PresetConfig("small")).fingerprint());
  EXPECT_EQ(KvLayout(*PresetConfig("tiny")).fingerprint(), KvLayout(*PresetConfig("tiny")).fingerprint());
}

TEST(KvCodecTest, MainEntryEncodingIsLosslessForSimulatedValues) {
  MainEntryCodec codec{448, 64, 584};
  std::vector<float> v(512);
  for (size_t i = 0; i < v.size(); ++i) v[i] = RoundToBf16(std::sin(static_cast<float>(i)) * (i % 64 == 0 ? 300.0f : 1.0f));
  std::vector<uint8_t> bytes(584), again(584);
  std::vector<float> simulated = v;
  codec.Encode(simulated.data(), bytes.data());
  std::vector<float> decoded(512);
  codec.Decode(bytes.data(), decoded.data());
  EXPECT_EQ(decoded, simulated);
  for (size_t i = 448; i < 512; ++i) EXPECT_EQ(decoded[i], v[i]) << "RoPE dims stay BF16";
  // Re-encoding the simulated values gives the same bytes (the simulation is a fixed point).
  std::vector<float> copy = decoded;
  codec.Encode(copy.data(), again.data());
  EXPECT_EQ(again, bytes);
}

TEST(KvCodecTest, IndexerEntryIsFp4WithPowerOfTwoScales) {
  IndexerEntryCodec codec{128, 68};
  std::vector<float> v(128);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 13) - 6.0f;
  std::vector<uint8_t> bytes(68);
  codec.Encode(v.data(), bytes.data());
  std::vector<float> decoded(128);
  codec.Decode(bytes.data(), decoded.data());
  EXPECT_EQ(decoded, v);
  for (float x : decoded) {
    bool on_grid = false;
    for (uint8_t n = 0; n < 16; ++n) on_grid |= E2M1ToFloat(n) == x;
    EXPECT_TRUE(on_grid) << x << " with scale 1";
  }
}

}  // namespace
}  // namespace strata::engine
