// The CPU backend's branch-free main-entry decoding against the codec it replaces on the hot
// path: every E4M3 code (zeros of both signs, subnormals, the largest normals, both NaNs) under
// the smallest, a middle and the largest UE8M0 scale, and BF16 RoPE values — bit for bit.
#include "engine/cpu/vector_ops.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/kv/kv_codec.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

TEST(VectorOpsTest, DecodeMainEntryEqualsTheCodecForEveryCode) {
  const MainEntryCodec codec{256, 64, 256 + 4 + 128};
  std::vector<uint8_t> entry(static_cast<size_t>(codec.bytes), 0);
  for (int i = 0; i < 256; ++i) entry[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
  for (uint8_t scale :
       {uint8_t{0}, uint8_t{1}, uint8_t{120}, uint8_t{127}, uint8_t{200}, uint8_t{254}}) {
    for (int b = 0; b < 4; ++b) entry[static_cast<size_t>(256 + b)] = scale;
    for (int i = 0; i < 64; ++i) {  // RoPE part: BF16 bit patterns of every sign and size
      const uint16_t bits = static_cast<uint16_t>(i * 1031 + (i & 1 ? 0x8000 : 0));
      std::memcpy(entry.data() + 260 + 2 * i, &bits, 2);
    }
    std::vector<float> want(320), got(320);
    codec.Decode(entry.data(), want.data());
    cpu::DecodeMainEntry(entry.data(), codec.nope, codec.rope, got.data());
    for (int i = 0; i < 320; ++i) {
      if (std::isnan(want[static_cast<size_t>(i)])) {
        EXPECT_TRUE(std::isnan(got[static_cast<size_t>(i)]))
            << "value " << i << " scale " << int{scale};
        continue;
      }
      uint32_t a, b;
      std::memcpy(&a, &want[static_cast<size_t>(i)], 4);
      std::memcpy(&b, &got[static_cast<size_t>(i)], 4);
      EXPECT_EQ(a, b) << "value " << i << " scale " << int{scale} << ": "
                      << want[static_cast<size_t>(i)] << " vs " << got[static_cast<size_t>(i)];
    }
  }
}

}  // namespace
}  // namespace strata::engine
