// Encoding of single KV entries (DESIGN.md §5, MODEL.md §2). The model's KV simulation (FP8 on
// the non-RoPE part of main entries, FP4 on indexer vectors, power-of-two block scales) is done
// *by* encoding: a vector is quantized to its stored bytes and read back, so the values the
// attention uses and the bytes in the cache are the same thing by construction.
//
//   main entry    [nope × E4M3][nope/64 × UE8M0][rope × BF16][pad to 8]
//   indexer entry [ic/2 × packed E2M1][ic/32 × UE8M0][pad to 4]
#pragma once

#include <cstdint>

namespace strata::engine {

struct MainEntryCodec {
  int64_t nope = 0;  // FP8 part (multiple of 64)
  int64_t rope = 0;  // BF16 part
  int64_t bytes = 0;

  // Quantizes v[nope + rope] (BF16-representable values) into `out`, and rewrites v's FP8 part
  // with the values it now holds (the "simulated FP8" of the reference).
  void Encode(float* v, uint8_t* out) const;
  void Decode(const uint8_t* in, float* v) const;
};

struct IndexerEntryCodec {
  int64_t dim = 0;  // ic (multiple of 32)
  int64_t bytes = 0;

  // FP4 E2M1 with one power-of-two scale per 32 values (amax floored at 6·2^-126); rewrites v.
  void Encode(float* v, uint8_t* out) const;
  void Decode(const uint8_t* in, float* v) const;
};

// In-place simulated FP4 of a vector of `dim` values (blocks of 32), as Encode then Decode.
void SimulateFp4(float* v, int64_t dim);

}  // namespace strata::engine
