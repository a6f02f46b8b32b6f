#include "expert_pool/wire.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/numerics.h"

namespace strata::expert_pool {
namespace {
constexpr int64_t kBlock = 128;
}

int64_t RowBytes(int64_t d) { return d + (d + kBlock - 1) / kBlock; }

void EncodeRow(const float* x, int64_t d, uint8_t* out) {
  uint8_t* scales = out + d;
  for (int64_t b0 = 0, blk = 0; b0 < d; b0 += kBlock, ++blk) {
    const int64_t len = std::min(kBlock, d - b0);
    float amax = 0.0f;
    for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[b0 + i]));
    const int e = engine::PowerOfTwoScaleExponent(amax, engine::kE4M3Max, 1e-4f);
    scales[blk] = engine::Ue8m0FromExponent(e);
    const float inv = std::ldexp(1.0f, -e);
    for (int64_t i = b0; i < b0 + len; ++i) out[i] = engine::FloatToE4M3(x[i] * inv);
  }
}

void DecodeRow(const uint8_t* in, int64_t d, float* x) {
  const uint8_t* scales = in + d;
  for (int64_t b0 = 0, blk = 0; b0 < d; b0 += kBlock, ++blk) {
    const float scale = engine::Ue8m0ToFloat(scales[blk]);
    const int64_t end = std::min(d, b0 + kBlock);
    for (int64_t i = b0; i < end; ++i) x[i] = engine::E4M3ToFloat(in[i]) * scale;
  }
}

template <typename Header>
absl::StatusOr<Header> ParseHeader(std::string_view payload, const char* what) {
  if (payload.size() != sizeof(Header)) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert pool: a ", what, " message of ", payload.size(), " bytes, want ", sizeof(Header)));
  }
  Header h;
  std::memcpy(&h, payload.data(), sizeof(h));
  return h;
}
template absl::StatusOr<DispatchHeader> ParseHeader<DispatchHeader>(std::string_view, const char*);
template absl::StatusOr<CombineHeader> ParseHeader<CombineHeader>(std::string_view, const char*);

std::string_view Bytes(const void* header, size_t size) {
  return std::string_view(static_cast<const char*>(header), size);
}

}  // namespace strata::expert_pool
