// The expert pool's data plane on the wire (DESIGN.md §1 step 4): what an attention worker puts
// into a rank's dispatch region, what the rank puts back into the worker's combine region, and
// the two small messages that follow each put.
//
// Per layer, a worker sends each rank the work of that rank's experts in waves (groups of its
// experts, in increasing id): wave w's bytes are the rows of the tokens first needed in it (FP8
// E4M3 codes and one UE8M0 scale per 128 values: the bytes the expert's first linear quantizes
// its input to anyway, so a row travels at about half its BF16 size and loses nothing) followed by
// its (row, expert, weight) pairs. A row travels once per rank and layer; later waves name it by
// index. The rank answers each wave with one BF16 value row per pair: bf16(expert(x)·weight),
// which the worker sums per token in increasing expert id, as LocalExperts does.
//
// All integers are little-endian (the hosts are), structs are copied byte for byte.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata::expert_pool {

inline constexpr uint16_t kDispatchMessage = 0x4550;  // worker → rank, after a wave's put
inline constexpr uint16_t kCombineMessage = 0x4551;   // rank → worker, after its results' put

struct DispatchHeader {
  uint64_t client = 0;      // the worker's id at this rank (its attachment)
  uint64_t seq = 0;         // the worker's Run number: a rank starts over at a new one
  int32_t layer = 0;
  int32_t wave = 0;         // within the Run, for the answer
  int32_t first_row = 0;    // index of the first new row (0 at a Run's first wave to this rank)
  int32_t new_rows = 0;
  int32_t pairs = 0;
  int32_t reserved = 0;
  uint64_t offset = 0;         // of the wave's bytes in the dispatch region
  uint64_t result_offset = 0;  // where its results go in the worker's combine region
};

struct CombineHeader {
  uint64_t seq = 0;
  int32_t rank = 0;   // the rank's index in the worker's list (echoed from its attachment)
  int32_t wave = 0;
  int32_t pairs = 0;
  int32_t code = 0;   // absl::StatusCode of the wave's computation; results valid only when 0
  char message[96] = {};  // what went wrong, when code != 0
};

struct Pair {
  int32_t row = 0;     // index among the Run's rows sent to this rank
  int32_t expert = 0;  // the layer's expert id
  float weight = 0;    // its routing weight
};

// Bytes of one row of d values: d E4M3 codes, then ceil(d/128) UE8M0 scales.
int64_t RowBytes(int64_t d);
// Quantizes x [d] exactly as the experts' first linear does (per 128 values, scale
// 2^ceil(log2(max(amax, 1e-4)/448)), E4M3 round to nearest even, saturating).
void EncodeRow(const float* x, int64_t d, uint8_t* out);
// The values the codes stand for. Quantizing them again gives the same values (the scale may
// halve, the codes then double: the products are the same), so the expert computes on them what
// it computes on x.
void DecodeRow(const uint8_t* in, int64_t d, float* x);

// A message's bytes as a header, or InvalidArgument naming the message.
template <typename Header>
absl::StatusOr<Header> ParseHeader(std::string_view payload, const char* what);
std::string_view Bytes(const void* header, size_t size);

}  // namespace strata::expert_pool
