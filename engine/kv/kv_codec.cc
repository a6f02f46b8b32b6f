#include "engine/kv/kv_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/numerics.h"

namespace strata::engine {
namespace {

constexpr float kFp8AmaxFloor = 1e-4f;
const float kFp4AmaxFloor = 6.0f * std::ldexp(1.0f, -126);

}  // namespace

void MainEntryCodec::Encode(float* v, uint8_t* out) const {
  uint8_t* scales = out + nope;
  for (int64_t b = 0; b < nope / 64; ++b) {
    float amax = 0;
    for (int64_t i = 0; i < 64; ++i) amax = std::max(amax, std::fabs(v[b * 64 + i]));
    const int e = PowerOfTwoScaleExponent(amax, kE4M3Max, kFp8AmaxFloor);
    scales[b] = Ue8m0FromExponent(e);
    const float inv = std::ldexp(1.0f, -e), s = std::ldexp(1.0f, e);
    for (int64_t i = 0; i < 64; ++i) {
      const uint8_t q = FloatToE4M3(v[b * 64 + i] * inv);
      out[b * 64 + i] = q;
      v[b * 64 + i] = E4M3ToFloat(q) * s;
    }
  }
  uint8_t* rope_out = scales + nope / 64;
  for (int64_t i = 0; i < rope; ++i) {
    const uint16_t bits = FloatToBf16(v[nope + i]);
    std::memcpy(rope_out + 2 * i, &bits, 2);
  }
  const int64_t used = nope + nope / 64 + 2 * rope;
  std::memset(out + used, 0, static_cast<size_t>(bytes - used));
}

void MainEntryCodec::Decode(const uint8_t* in, float* v) const {
  const uint8_t* scales = in + nope;
  for (int64_t b = 0; b < nope / 64; ++b) {
    const float s = Ue8m0ToFloat(scales[b]);
    for (int64_t i = 0; i < 64; ++i) v[b * 64 + i] = E4M3ToFloat(in[b * 64 + i]) * s;
  }
  const uint8_t* rope_in = scales + nope / 64;
  for (int64_t i = 0; i < rope; ++i) {
    uint16_t bits;
    std::memcpy(&bits, rope_in + 2 * i, 2);
    v[nope + i] = Bf16ToFloat(bits);
  }
}

void IndexerEntryCodec::Encode(float* v, uint8_t* out) const {
  uint8_t* scales = out + dim / 2;
  for (int64_t b = 0; b < dim / 32; ++b) {
    float amax = 0;
    for (int64_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[b * 32 + i]));
    const int e = PowerOfTwoScaleExponent(amax, kE2M1Max, kFp4AmaxFloor);
    scales[b] = Ue8m0FromExponent(e);
    const float inv = std::ldexp(1.0f, -e), s = std::ldexp(1.0f, e);
    for (int64_t i = 0; i < 32; i += 2) {
      const uint8_t lo = FloatToE2M1(v[b * 32 + i] * inv), hi = FloatToE2M1(v[b * 32 + i + 1] * inv);
      out[(b * 32 + i) / 2] = static_cast<uint8_t>(lo | (hi << 4));
      v[b * 32 + i] = E2M1ToFloat(lo) * s;
      v[b * 32 + i + 1] = E2M1ToFloat(hi) * s;
    }
  }
  const int64_t used = dim / 2 + dim / 32;
  std::memset(out + used, 0, static_cast<size_t>(bytes - used));
}

namespace {

// Both values of a packed E2M1 byte (low nibble first): decoding is two table reads per byte.
struct E2M1PairTable {
  float pairs[256][2];
  E2M1PairTable() {
    for (int b = 0; b < 256; ++b) {
      pairs[b][0] = E2M1ToFloat(static_cast<uint8_t>(b & 0xF));
      pairs[b][1] = E2M1ToFloat(static_cast<uint8_t>(b >> 4));
    }
  }
};
const E2M1PairTable kE2M1Pairs;

}  // namespace

void IndexerEntryCodec::Decode(const uint8_t* in, float* v) const {
  const uint8_t* scales = in + dim / 2;
  for (int64_t b = 0; b < dim / 32; ++b) {
    const float s = Ue8m0ToFloat(scales[b]);
    const uint8_t* bytes = in + b * 16;
    float* out = v + b * 32;
    for (int64_t i = 0; i < 16; ++i) {
      out[2 * i] = kE2M1Pairs.pairs[bytes[i]][0] * s;
      out[2 * i + 1] = kE2M1Pairs.pairs[bytes[i]][1] * s;
    }
  }
}

void SimulateFp4(float* v, int64_t dim) {
  IndexerEntryCodec codec{dim, dim / 2 + dim / 32};
  std::vector<uint8_t> scratch(static_cast<size_t>(codec.bytes));
  codec.Encode(v, scratch.data());
}

}  // namespace strata::engine
